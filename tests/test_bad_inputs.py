"""Bad inputs to export, convert and lint: one line on stderr naming the file and what was expected, exit code 2,
and no output file left behind."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import onnx
import pytest
import torch
from torchvision.models import resnet18

from maskrt.convert import shapes_demo
from maskrt.convert.cli import main as maskrt
from maskrt.convert.models import load_model

from detection_support import Case, surgery


def assert_refused(capsys: pytest.CaptureFixture[str], argv: list[str], output: Path, *expected: str) -> None:
    assert maskrt(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    for words in expected:
        assert words in error, error
    assert not output.exists()
    if output.parent.exists():
        assert not [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}")], "temporary file left"


def test_a_corrupt_onnx_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, output = tmp_path / "model.onnx", tmp_path / "deploy.onnx"
    model.write_bytes(b"\x08\x07 this is not a protobuf \xff\xfe" * 100)
    assert_refused(capsys, surgery(model, output), output, str(model), "not a readable ONNX model")


def test_a_truncated_export(tmp_path: Path, capsys: pytest.CaptureFixture[str], resnet18_plain: Case) -> None:
    model, output = tmp_path / "model.onnx", tmp_path / "deploy.onnx"
    model.write_bytes(resnet18_plain.exported.read_bytes()[:100_000])
    assert_refused(capsys, surgery(model, output), output, str(model), "not a readable ONNX model")


def test_an_onnx_that_is_not_a_mask_rcnn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, output = tmp_path / "classifier.onnx", tmp_path / "deploy.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(resnet18(num_classes=10).eval(), (torch.rand(1, 3, 64, 64),), model, opset_version=17, dynamo=False)
    assert_refused(
        capsys, surgery(model, output), output, str(model), "not a torchvision Mask R-CNN export", "rpn.head.cls_logits.weight"
    )


def test_an_opset_below_11(tmp_path: Path, capsys: pytest.CaptureFixture[str], resnet18_plain: Case) -> None:
    exported = onnx.load(resnet18_plain.exported)
    next(o for o in exported.opset_import if o.domain in ("", "ai.onnx")).version = 10
    model, output = tmp_path / "old.onnx", tmp_path / "deploy.onnx"
    onnx.save(exported, model)
    assert_refused(capsys, surgery(model, output), output, str(model), "opset 10 is below 11")


def test_an_output_path_in_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str], resnet18_plain: Case) -> None:
    output = tmp_path / "missing" / "deploy.onnx"
    assert_refused(capsys, surgery(resnet18_plain.exported, output), output, str(output), "does not exist")
    assert_refused(
        capsys, ["export", "--model", "maskrcnn_resnet18_fpn", "-o", str(output)], output, str(output), "does not exist"
    )


def test_a_model_file_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "deploy.onnx"
    assert_refused(capsys, surgery(tmp_path / "nowhere.onnx", output), output, "nowhere.onnx", "file not found")


def test_an_input_size_that_contradicts_a_static_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], resnet18_plain: Case
) -> None:
    output = tmp_path / "deploy.onnx"
    argv = surgery(resnet18_plain.exported, output, "--input-size", "640x640")
    assert_refused(capsys, argv, output, "exported at 320x480", "640x640")


def test_weights_that_are_corrupt_or_for_another_architecture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "model.onnx"
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a zip file" * 50)
    export = ["export", "--model", "maskrcnn_resnet50_fpn", "-o", str(output), "--weights"]
    assert_refused(capsys, [*export, str(corrupt)], output, str(corrupt), "not a readable torch state_dict")
    classifier = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), classifier)
    assert_refused(capsys, [*export, str(classifier)], output, str(classifier), "not weights for maskrcnn_resnet50_fpn", "missing")


def test_the_console_scripts_exit_with_2(tmp_path: Path) -> None:
    """What a shell sees: `trt-convert` (or `python -m maskrt.convert.cli convert` where it is not installed)."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"garbage")
    command = [shutil.which("trt-convert")] if shutil.which("trt-convert") else [sys.executable, "-m", "maskrt.convert.cli", "convert"]
    result = subprocess.run([*command, str(model), "--surgery-only"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert f"{model}: not a readable ONNX model" in line
    assert not (tmp_path / "deploy.onnx").exists()


def test_without_tensorrt_convert_stops_after_the_deploy_graph_and_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], resnet18_plain: Case
) -> None:
    if hasattr(importlib.import_module("tensorrt") if importlib.util.find_spec("tensorrt") else None, "Builder"):
        pytest.skip("TensorRT is installed here: the engine build runs")
    engine = tmp_path / "model.engine"
    assert maskrt(["convert", str(resnet18_plain.exported), "--precision", "fp32", "-o", str(engine)]) == 3
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "needs TensorRT" in error and "pip install 'maskrt[tensorrt]'" in error
    assert (tmp_path / "model.deploy.onnx").is_file() and not engine.exists()


def test_shapes_demo_refuses_a_truncated_checkpoint_or_one_of_another_architecture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "model.onnx"
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(shapes_demo.CHECKPOINT.read_bytes()[:50_000])
    export = ["export", "--model", "shapes-demo", "-o", str(output), "--weights"]
    assert_refused(capsys, [*export, str(truncated)], output, str(truncated), "not a readable safetensors file")
    other = tmp_path / "resnet18_fpn.pth"
    torch.save(load_model("maskrcnn_resnet18_fpn", None, 4).state_dict(), other)
    assert_refused(capsys, [*export, str(other)], output, str(other), "not weights for shapes-demo", "unexpected", "wrong shape")
