"""One exit-code table for every verb (cli/exits.py, README.md's table), verb by verb: a bad input exits with 2, an
engine or a GPU provider where TensorRT or the GPU is missing with 3, each with one line on stderr naming what is
wrong, and no output made.

The other codes are proven where their work is: 1 for a check that fails by tests/test_check.py
(test_a_broken_graph_is_caught_at_the_tensor_where_it_breaks, test_a_backend_that_fails_on_one_image_is_reported_for_that_image)
and for an internal error by tests/test_cli.py (test_an_internal_error_is_one_line_and_exit_1); 130 and 143 by
tests/test_interrupts.py.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from maskrt.calib.shapes import write_dataset
from maskrt.cli import exits
from maskrt.cli.main import _parser
from maskrt.cli.main import main as maskrt

from runtime_support import shapes_demo_engine

OUT = "{tmp}/out"  # where each row asks for its output; it must not appear
TENSORRT_HERE = bool(importlib.util.find_spec("tensorrt")) and hasattr(importlib.import_module("tensorrt"), "Runtime")
CUDA_PROVIDER_HERE = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
PROC = Path("/proc").is_dir()  # a folder that takes no new files, even from root

# (verb, argv with {placeholders} of the `inputs` fixture, exit code, words the one line on stderr says)
ROWS: list[tuple[str, str, int, tuple[str, ...]]] = [
    ("export", "export --model shapes-demo --num-classes 5 -o {tmp}/out.onnx", 2, ("--num-classes 5", "4 classes", "--num-classes 4")),
    ("export", "export --model shapes-demo --opset 9 -o {tmp}/out.onnx", 2, ("--opset 9",)),
    ("export", "export --model shapes-demo -o {file}/out.onnx", 2, ("out.onnx: the output folder", "is a file")),
    ("convert", "convert {tmp}/missing.onnx -o {tmp}/out.onnx", 2, ("missing.onnx: file not found",)),
    ("convert", "convert {garbage} --surgery-only -o {tmp}/out.onnx", 2, ("garbage.onnx: not a readable ONNX model",)),
    ("convert", "convert {classifier} --surgery-only -o {tmp}/out.onnx", 2, ("not a torchvision Mask R-CNN export",)),
    ("convert", "convert {deploy} --precision int8 --onnx-only -o {tmp}/out.onnx", 2, ("--calib-images",)),
    ("convert", "convert {deploy} --precision fp16 --onnx-only -o {deploy}", 2, ("is also the input file",)),
    ("convert", "convert {deploy} --precision fp32 -o {tmp}/out.engine", 3, ("is ready, but building its engine needs",)),
    ("lint", "lint {garbage}", 2, ("garbage.onnx: not a readable ONNX model",)),
    ("lint", "lint {deploy} --target trt7", 2, ("--target", "invalid choice")),
    ("shapes", "shapes --count 0 -o " + OUT, 2, ("--count", "at least 1")),
    ("shapes", "shapes -o {file}/out", 2, ("is a file, so no folder can be made under it",)),
    ("plugins", "plugins compile", 2, ("invalid choice: 'compile'",)),
    ("infer", "infer {deploy} {tmp}/missing.png -o " + OUT, 2, ("missing.png: no such file or folder",)),
    ("infer", "infer {deploy} {unreadable} -o " + OUT, 2, ("none of the 2 input image(s) is readable",)),
    ("infer", "infer {classifier} {images} -o " + OUT, 2, ("nor a Mask R-CNN export",)),
    ("infer", "infer {deploy} {images} -o {file}", 2, ("exists and is not a folder",)),
    ("infer", "infer {engine} {images} -o " + OUT, 3, ("needs TensorRT", "pip install 'maskrt[tensorrt]'")),
    ("bench", "bench {deploy} --cuda-graph", 2, ("--cuda-graph", "not an engine")),
    ("bench", "bench {deploy} --batch 2", 2, ("--batch must be between 1 and the model's batch 1",)),
    ("bench", "bench {engine} --device cpu", 2, ("runs on the GPU (not --device cpu)",)),
    ("bench", "bench {engine}", 3, ("needs TensorRT",)),
    ("bench", "bench {deploy} --device cuda", 3, ("CUDA provider is not installed here",)),
    ("check", "check --shapes-demo --deploy {deploy} --images {tmp}/nowhere -o " + OUT, 2, ("nowhere: no such folder",)),
    ("check", "check --torchvision maskrcnn_resnet50_fpn --deploy {deploy} --images {images} -o " + OUT, 2, ("--weights",)),
    ("check", "check --shapes-demo --deploy {deploy} --images {images} -o {file}", 2, ("is a file, expected a folder",)),
    ("check", "check --shapes-demo --engine {engine} --images {images} -o " + OUT, 3, ("needs TensorRT", "nothing else")),
    ("demo", "demo -o {full}", 2, ("is not an empty folder",)),
    ("doctor", "doctor --gpu", 2, ("unrecognized arguments: --gpu",)),
    ("serve", "serve {garbage}", 2, ("garbage.onnx: not a readable ONNX model",)),
    ("triton", "triton {deploy} -o {file}", 2, ("exists and is not an empty folder",)),
    ("deepstream", "deepstream {deploy} -o " + OUT, 2, ("not in DeepStream's layout",)),
]
if PROC:
    ROWS += [
        ("export", "export --model shapes-demo -o /proc/maskrt.onnx", 2, ("/proc/maskrt.onnx: cannot be written",)),
        ("infer", "infer {deploy} {images} -o /proc/maskrt", 2, ("/proc/maskrt: cannot be written",)),
        ("check", "check --shapes-demo --deploy {deploy} --images {images} -o /proc/maskrt", 2, ("/proc/maskrt: cannot be written",)),
    ]


@pytest.fixture(scope="module")
def inputs(shapes_demo_graph: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What the rows refer to: shapes-demo's deploy graph, two images, two unreadable ones, a file that is not ONNX,
    an ONNX classifier, an engine with its json (as trt-convert writes them, for a GPU this machine may not have), a
    plain file and a folder that is not empty."""
    folder = tmp_path_factory.mktemp("exit-codes")
    write_dataset(folder / "dataset", count=2, seed=0, size=64)
    unreadable = folder / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    (unreadable / "b.jpg").write_bytes(b"")
    garbage = folder / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 not a protobuf \xff" * 64)
    (folder / "file").write_text("a file where a folder is asked for")
    (folder / "full").mkdir()
    (folder / "full" / "notes.txt").write_text("not the demo's")
    return {
        "deploy": shapes_demo_graph(1, "native"),
        "images": folder / "dataset" / "images",
        "unreadable": unreadable,
        "garbage": garbage,
        "classifier": classifier(folder / "classifier.onnx"),
        "engine": shapes_demo_engine(folder / "model.engine"),
        "file": folder / "file",
        "full": folder / "full",
    }


def classifier(path: Path) -> Path:
    """An image classifier: one Gemm over a flattened 3x8x8 image, what a user may hand maskrt by mistake."""
    weight = helper.make_tensor("weight", TensorProto.FLOAT, [192, 10], [0.01] * 1920)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"]),
            helper.make_node("Gemm", ["flat", "weight"], ["logits"]),
        ],
        "classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_the_table_names_every_verb() -> None:
    _, verbs = _parser()
    assert {verb for verb, *_ in ROWS} == set(verbs.choices)


@pytest.mark.parametrize(("verb", "argv", "code", "words"), ROWS, ids=[f"{row[0]}-{i}" for i, row in enumerate(ROWS)])
def test_each_verb_exits_with_the_code_of_the_table_and_one_line(
    inputs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    verb: str,
    argv: str,
    code: int,
    words: tuple[str, ...],
) -> None:
    if code == exits.NO_TENSORRT and (TENSORRT_HERE if "engine" in argv else CUDA_PROVIDER_HERE):
        pytest.skip("TensorRT or ONNX Runtime's CUDA provider is installed here: that would run")
    capsys.readouterr()  # what making the shared inputs printed
    assert maskrt(argv.format(tmp=tmp_path, **inputs).split()) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    prefix = f"maskrt {verb}: error: " if code == exits.BAD_INPUT else f"maskrt {verb}: "
    if "{unreadable}" in argv:  # each image is named as it is skipped, before the refusal
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith(prefix), captured.err
    for expected in words:
        assert expected in lines[0], lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.onnx").exists() and not (tmp_path / "out.engine").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary file was left"
