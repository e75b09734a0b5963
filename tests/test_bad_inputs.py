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
from maskrt.cli.main import main as maskrt
from maskrt.convert.models import load_model

from detection_support import Case, assert_refused, surgery


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


def test_weights_that_are_not_a_checkpoint_or_for_another_architecture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "model.onnx"
    export = ["export", "--model", "maskrcnn_resnet50_fpn", "-o", str(output), "--weights"]
    garbage, text = tmp_path / "garbage.pth", tmp_path / "notes.pth"
    garbage.write_bytes(b"not a zip file" * 50)
    text.write_text("a text file named like a checkpoint\n")
    for path in (garbage, text):
        assert_refused(capsys, [*export, str(path)], output, f"{path}: not a PyTorch checkpoint (a zip or pickle file")
    classifier = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), classifier)
    expected = (str(classifier), "not weights for maskrcnn_resnet50_fpn", "missing")
    assert_refused(capsys, [*export, str(classifier)], output, *expected)


def test_a_damaged_checkpoint_is_reported_with_the_whole_message_of_pytorch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = tmp_path / "whole.pth"
    torch.save(resnet18().state_dict(), whole)
    truncated, output = tmp_path / "truncated.pth", tmp_path / "model.onnx"
    truncated.write_bytes(whole.read_bytes()[:100_000])
    with pytest.raises(RuntimeError) as pytorch:
        torch.load(truncated, weights_only=True)
    argv = ["export", "--model", "maskrcnn_resnet18_fpn", "--weights", str(truncated), "-o", str(output)]
    assert_refused(capsys, argv, output, f"{truncated}: not a readable PyTorch checkpoint: {pytorch.value}")


def test_a_pickle_of_other_objects_is_refused_in_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights, output = tmp_path / "model.pth", tmp_path / "model.onnx"
    torch.save({"model": resnet18(), "epoch": 3}, weights)  # the whole module, not its state_dict
    argv = ["export", "--model", "maskrcnn_resnet18_fpn", "--weights", str(weights), "-o", str(output)]
    assert_refused(capsys, argv, output, str(weights), "holds Python objects other than tensors", "state_dict()")


def test_a_text_file_named_safetensors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights, output = tmp_path / "model.safetensors", tmp_path / "model.onnx"
    weights.write_text("not tensors\n")
    argv = ["export", "--model", "shapes-demo", "--weights", str(weights), "-o", str(output)]
    assert_refused(capsys, argv, output, f"{weights}: not a safetensors file")


def test_a_folder_given_as_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, output = tmp_path / "model.onnx", tmp_path / "deploy.onnx"
    folder.mkdir()
    assert_refused(capsys, surgery(folder, output), output, f"{folder}: is a folder, expected an ONNX model")
    assert_refused(capsys, ["lint", str(folder)], output, f"{folder}: is a folder, expected an ONNX model")
    weights, exported = tmp_path / "weights.pth", tmp_path / "exported.onnx"
    weights.mkdir()
    argv = ["export", "--model", "shapes-demo", "--weights", str(weights), "-o", str(exported)]
    assert_refused(capsys, argv, exported, f"{weights}: is a folder, expected a weights file")


def test_an_output_that_is_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, link = tmp_path / "deploy.onnx", tmp_path / "link.onnx"
    model.write_bytes(b"the export")
    link.symlink_to(model)  # the same file under another name
    for argv, named in (
        (["convert", str(model), "--surgery-only", "-o", str(link)], link),
        (["convert", str(model), "--surgery-only"], model),  # the default output: deploy.onnx beside the export
        (["convert", str(model), "-o", str(link)], link),  # the engine
    ):
        assert maskrt(argv) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert f"{named}: is also the input file" in line, line
        assert model.read_bytes() == b"the export"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy.onnx", "link.onnx"]
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"PK\x03\x04 weights")
    assert maskrt(["export", "--model", "shapes-demo", "--weights", str(weights), "-o", str(weights)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"{weights}: is also the input file" in line and weights.read_bytes() == b"PK\x03\x04 weights"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--detections-per-img", "0"], "argument --detections-per-img: must be at least 1, got 0"),
        (["--detections-per-img", "-5"], "argument --detections-per-img: must be at least 1, got -5"),
        (["--rpn-pre-nms-top-n", "-1"], "argument --rpn-pre-nms-top-n: must be at least 1, got -1"),
        (["--rpn-post-nms-top-n", "0"], "argument --rpn-post-nms-top-n: must be at least 1, got 0"),
        (["--rpn-nms-thresh", "5"], "argument --rpn-nms-thresh: must be between 0 and 1, got 5"),
        (["--rpn-score-thresh", "-0.1"], "argument --rpn-score-thresh: must be between 0 and 1, got -0.1"),
        (["--box-score-thresh", "1.5"], "argument --box-score-thresh: must be between 0 and 1, got 1.5"),
        (["--box-nms-thresh", "nan"], "argument --box-nms-thresh: expected a finite number, got 'nan'"),
        (["--input-size", "7"], "argument --input-size: expected HxW such as 800x1344, got '7'"),
        (["--workspace", "0"], "argument --workspace: must be above 0, got 0"),
        (["--plugins", "tensorrt"], "argument --plugins: invalid choice: 'tensorrt'"),
    ],
)
def test_detection_settings_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    model, output = tmp_path / "model.onnx", tmp_path / "deploy.onnx"
    model.write_bytes(b"never read: the flags are refused first")
    assert_refused(capsys, surgery(model, output, *flags), output, f"maskrt convert: error: {expected}", "--help")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--num-classes", "-3"], "argument --num-classes: must be at least 2 (the background and one class), got -3"),
        (["--num-classes", "0"], "argument --num-classes: must be at least 2"),
        (["--batch", "0"], "argument --batch: must be at least 1, got 0"),
        (["--seed", "-1"], "argument --seed: must be at least 0, got -1"),
        (["--opset", "5"], "--opset 5 is outside 11.."),
        (["--opset", "99"], "--opset 99 is outside 11.."),
        (["--input-size", "7x7"], "--input-size 7x7 is too small for shapes-demo"),
    ],
)
def test_export_settings_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    output = tmp_path / "model.onnx"
    assert_refused(capsys, ["export", "--model", "shapes-demo", "-o", str(output), *flags], output, expected)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--count", "0"], "argument --count: must be at least 1, got 0"),
        (["--size", "8"], "argument --size: must be at least 32, got 8"),
    ],
)
def test_shapes_settings_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    output = tmp_path / "val"
    assert_refused(capsys, ["shapes", "-o", str(output), *flags], output, expected)
    assert not list(tmp_path.iterdir())


def test_the_smallest_input_size_is_that_of_one_cell_of_the_coarsest_level(tmp_path: Path) -> None:
    """torchvision pads to a multiple of 32; the coarsest level, P6 = P5 max-pooled, has a stride of 64, so an image of
    33 pixels pads to 64 and still gives every level a grid of its own; one of 32 does not."""
    model = load_model("shapes-demo", None, None)
    with torch.no_grad():
        levels = [f.shape[-2:] for f in model.backbone(torch.zeros(1, 3, 64, 64)).values()]
    assert levels[-1] == (1, 1) and levels[-2] == (2, 2)
    export = ["export", "--model", "shapes-demo", "-o", str(tmp_path / "small.onnx"), "--input-size"]
    assert maskrt([*export, "32x40"]) == 2
    assert maskrt([*export, "33x40"]) == 0


def test_the_console_scripts_exit_with_2(tmp_path: Path) -> None:
    """What a shell sees: `trt-convert` (or `python -m maskrt.cli convert` where it is not installed)."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"garbage")
    command = [shutil.which("trt-convert")] if shutil.which("trt-convert") else [sys.executable, "-m", "maskrt.cli", "convert"]
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
    # Printed as written: a console that read markup would drop "[tensorrt]" as a style tag.
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
