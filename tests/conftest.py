"""Shared test models: each is exported once per test session, and converted once per plugin mode."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from maskrt.cli.main import main as maskrt

from detection_support import (
    Case,
    convert,
    detecting_model,
    every_setting_changed,
    letterboxed_images,
    maskrt_export,
    plain_case,
)
from torchvision_reference import reference_outputs


@pytest.fixture(scope="session")
def resnet18_plain(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """A ResNet-18 FPN with 3 classes at 320×480, batch 2, from plain torch.onnx.export: thresholds from the graph."""
    images = letterboxed_images(2, 320, 480, seed=2)
    model = detecting_model("maskrcnn_resnet18_fpn", 3, images)
    return plain_case(model, images, tmp_path_factory.mktemp("resnet18"))


@pytest.fixture(scope="session")
def mobilenet_maskrt(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """A MobileNetV3 FPN (two maps of stride 32, 15 anchors per location) with 3 classes, batch 2, from maskrt export."""
    images = letterboxed_images(2, 320, 480, seed=5)
    model = detecting_model("maskrcnn_mobilenet_v3_large_fpn", 3, images)
    exported = maskrt_export("maskrcnn_mobilenet_v3_large_fpn", model, images, tmp_path_factory.mktemp("mobilenet"))
    return Case(model, images, exported, ("--box-score-thresh", "0.5"), reference_outputs(model, images))


@pytest.fixture(scope="session")
def mobilenet_plain(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """MobileNetV3-Large FPN as torchvision builds fasterrcnn_mobilenet_v3_large_fpn (maps "0" and "1" both of
    stride 32, then "pool"; 15 anchors per location; pooling over "0" and "1") with 5 classes, one 320×480 image,
    from plain torch.onnx.export."""
    images = letterboxed_images(1, 320, 480, seed=5)
    model = detecting_model("maskrcnn_mobilenet_v3_large_fpn", 5, images)
    return plain_case(model, images, tmp_path_factory.mktemp("mobilenet-plain"))


@pytest.fixture(scope="session")
def every_setting_changed_plain(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """detection_support.every_setting_changed at 320×480, batch 2, from plain torch.onnx.export: no flags."""
    images = letterboxed_images(2, 320, 480, seed=7)
    model = every_setting_changed(images)
    return plain_case(model, images, tmp_path_factory.mktemp("every-setting"))


@pytest.fixture(scope="session")
def resnet50_fpn(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """ResNet-50-FPN v1 with COCO's 91 classes at 800×1344 from maskrt export: the full-size model of the slow tests."""
    images = letterboxed_images(1, 800, 1344)
    model = detecting_model("maskrcnn_resnet50_fpn", 91, images)
    exported = maskrt_export("maskrcnn_resnet50_fpn", model, images, tmp_path_factory.mktemp("resnet50"))
    return Case(model, images, exported, ("--box-score-thresh", "0.5"), reference_outputs(model, images))


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
def shapes_demo_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`maskrt export --model shapes-demo` (batch 1, 128x128), once per session."""
    exported = tmp_path_factory.mktemp("shapes-demo-export") / "model.onnx"
    assert maskrt(["export", "--model", "shapes-demo", "-o", str(exported)]) == 0
    return exported


@pytest.fixture(scope="session")
def shapes_demo_deploy(shapes_demo_export: Path) -> Callable[[str], Path]:
    """shapes_demo_deploy(plugins): the deploy graph of shapes_demo_export, made once per session and plugin mode."""
    deploys: dict[str, Path] = {}

    def deploy(plugins: str) -> Path:
        if plugins not in deploys:
            deploys[plugins] = convert(shapes_demo_export, plugins)
        return deploys[plugins]

    return deploy


@pytest.fixture(scope="session")
def shapes_demo_precision(shapes_demo_export: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`trt-convert --onnx-only` of shapes_demo_export (maskrt plugins), once per session: {"fp16": the AutoCast
    graph, "int8": the Q/DQ graph calibrated on four images of the shapes train set (seed 0)}."""
    folder = tmp_path_factory.mktemp("onnx-only")
    assert maskrt(["shapes", "--count", "4", "--seed", "0", "-o", str(folder / "train")]) == 0
    graphs = {"fp16": folder / "model.fp16.onnx", "int8": folder / "model.int8.onnx"}
    onnx_only = ["convert", str(shapes_demo_export), "--onnx-only"]
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("XDG_CACHE_HOME", str(folder / "cache"))
        assert maskrt([*onnx_only, "--precision", "fp16", "-o", str(graphs["fp16"])]) == 0
        calibration = ["--calib-images", str(folder / "train"), "--calib-count", "4"]
        assert maskrt([*onnx_only, "--precision", "int8", *calibration, "-o", str(graphs["int8"])]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["cache", "model.fp16.onnx", "model.int8.onnx", "train"]
    return graphs


@pytest.fixture(scope="session")
def shapes_demo_graph(shapes_demo_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """shapes_demo_graph(batch, plugins, *flags): shapes-demo exported at that batch (batch 1: shapes_demo_export)
    and converted with those flags, made on first request."""
    folder = tmp_path_factory.mktemp("shapes-demo-graph")
    made: dict[tuple[object, ...], Path] = {}

    def deploy(batch: int = 1, plugins: str = "native", *flags: str) -> Path:
        exported = shapes_demo_export if batch == 1 else folder / f"model.b{batch}.onnx"
        if not exported.exists():
            assert maskrt(["export", "--model", "shapes-demo", "--batch", str(batch), "-o", str(exported)]) == 0
        key = (batch, plugins, *flags)
        if key not in made:
            output = folder / f"deploy.b{batch}.{plugins}{''.join(flags)}.onnx"
            assert maskrt(["convert", str(exported), "--surgery-only", "--plugins", plugins, *flags, "-o", str(output)]) == 0
            made[key] = output
        return made[key]

    return deploy


@pytest.fixture
def no_kernel_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    """No nvcc, and cuda-python failing to load libnvrtc as it does: with cuda.pathfinder's DynamicLibNotFoundError
    (a RuntimeError, not an ImportError)."""
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="needs cuda-python: pip install '.[test]'")
    pathfinder = pytest.importorskip("cuda.pathfinder")
    from maskrt.plugins import kernel_build

    def missing() -> None:
        raise pathfinder.DynamicLibNotFoundError('Failure finding "libnvrtc.so"')

    monkeypatch.setattr(kernel_build, "find_nvcc", lambda: None)
    monkeypatch.setattr(nvrtc, "nvrtcVersion", missing)
