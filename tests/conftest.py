"""Shared test models: each is exported once per test session, and converted once per plugin mode."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from maskrt.check.pytorch import deploy_outputs
from maskrt.convert.cli import main as maskrt

from detection_support import (
    Case,
    convert,
    detecting_model,
    every_setting_changed,
    letterboxed_images,
    maskrt_export,
    plain_export,
)


@pytest.fixture(scope="session")
def resnet18_plain(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """A ResNet-18 FPN with 3 classes at 320×480, batch 2, from plain torch.onnx.export: thresholds from the graph."""
    images = letterboxed_images(2, 320, 480, seed=2)
    model = detecting_model("maskrcnn_resnet18_fpn", 3, images)
    exported = plain_export(model, images, tmp_path_factory.mktemp("resnet18") / "model.onnx")
    return Case(model, images, exported, (), deploy_outputs(model, images))


@pytest.fixture(scope="session")
def mobilenet_maskrt(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """A MobileNetV3 FPN (two maps of stride 32, 15 anchors per location) with 3 classes, batch 2, from maskrt export."""
    images = letterboxed_images(2, 320, 480, seed=5)
    model = detecting_model("maskrcnn_mobilenet_v3_large_fpn", 3, images)
    exported = maskrt_export("maskrcnn_mobilenet_v3_large_fpn", model, images, tmp_path_factory.mktemp("mobilenet"))
    return Case(model, images, exported, ("--box-score-thresh", "0.5"), deploy_outputs(model, images))


@pytest.fixture(scope="session")
def mobilenet_plain(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """MobileNetV3-Large FPN as torchvision builds fasterrcnn_mobilenet_v3_large_fpn (maps "0" and "1" both of
    stride 32, then "pool"; 15 anchors per location; pooling over "0" and "1") with 5 classes, one 320×480 image,
    from plain torch.onnx.export."""
    images = letterboxed_images(1, 320, 480, seed=5)
    model = detecting_model("maskrcnn_mobilenet_v3_large_fpn", 5, images)
    exported = plain_export(model, images, tmp_path_factory.mktemp("mobilenet-plain") / "model.onnx")
    return Case(model, images, exported, (), deploy_outputs(model, images))


@pytest.fixture(scope="session")
def every_setting_changed_plain(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """detection_support.every_setting_changed at 320×480, batch 2, from plain torch.onnx.export: no flags."""
    images = letterboxed_images(2, 320, 480, seed=7)
    model = every_setting_changed(images)
    exported = plain_export(model, images, tmp_path_factory.mktemp("every-setting") / "model.onnx")
    return Case(model, images, exported, (), deploy_outputs(model, images))


@pytest.fixture(scope="session")
def resnet50_fpn(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """ResNet-50-FPN v1 with COCO's 91 classes at 800×1344 from maskrt export: the full-size model of the slow tests."""
    images = letterboxed_images(1, 800, 1344)
    model = detecting_model("maskrcnn_resnet50_fpn", 91, images)
    exported = maskrt_export("maskrcnn_resnet50_fpn", model, images, tmp_path_factory.mktemp("resnet50"))
    return Case(model, images, exported, ("--box-score-thresh", "0.5"), deploy_outputs(model, images))


@pytest.fixture(scope="session")
def converted() -> Callable[[Case, str], Path]:
    """converted(case, plugins): the deploy graph of a shared test model (with its flags), made on first request."""
    deploys: dict[tuple[Path, str], Path] = {}

    def deploy(case: Case, plugins: str) -> Path:
        if (case.exported, plugins) not in deploys:
            deploys[case.exported, plugins] = convert(case.exported, plugins, *case.flags)
        return deploys[case.exported, plugins]

    return deploy


@pytest.fixture(scope="session")
def shapes_demo_deploy(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """shapes_demo_deploy(batch, plugins, *flags): shapes-demo exported at that batch and converted, made on first
    request."""
    folder = tmp_path_factory.mktemp("shapes-demo-deploy")
    made: dict[tuple[object, ...], Path] = {}

    def deploy(batch: int = 1, plugins: str = "native", *flags: str) -> Path:
        exported = folder / f"model.b{batch}.onnx"
        if not exported.exists():
            assert maskrt(["export", "--model", "shapes-demo", "--batch", str(batch), "-o", str(exported)]) == 0
        key = (batch, plugins, *flags)
        if key not in made:
            output = folder / f"deploy.b{batch}.{plugins}{''.join(flags)}.onnx"
            assert maskrt(["convert", str(exported), "--surgery-only", "--plugins", plugins, *flags, "-o", str(output)]) == 0
            made[key] = output
        return made[key]

    return deploy
