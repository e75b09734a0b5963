"""Dynamic-batch deploy graphs (`trt-convert --max-batch N`): one graph runs 1 to N images, each image answered as
PyTorch answers it (the torchvision model run by the tests' own code, tests/torchvision_reference.py, matched by
tests/matching.py), in both plugin modes, from exports of any batch, and after FP16 and INT8; what cannot be given a
symbolic batch is refused in one line, as is a batch outside the range at run time."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime
import pytest

from maskrt.calib.shapes import render_sample
from maskrt.cli.main import main as maskrt
from maskrt.contracts.records import BATCH_DIM, read_deploy_record
from maskrt.convert.graphs import infer_shapes
from maskrt.convert.lint import lint_graph
from maskrt.convert.models import load_model
from maskrt.convert.precision import fp16_rounding_model
from maskrt.runtime.backends import open_backend
from maskrt.runtime.predictor import Predictor

from detection_support import Case, assert_matches, assert_refused, letterboxed_images, run_deploy, surgery
from test_precision import assert_close
from torchvision_reference import reference_outputs

MAX_BATCH = 5
BATCHES = (1, 2, 3, 5)


def shapes_val_images(count: int) -> np.ndarray:
    """[N,3,128,128] val images of the shapes dataset (seed 1), each filling the canvas."""
    return np.stack([render_sample(seed=1, index=i, size=128)[0] for i in range(count)]).transpose(0, 3, 1, 2).astype(np.float32)


@pytest.fixture(scope="module")
def shapes_reference() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Five shapes val images and what the shapes-demo model answers for them in PyTorch."""
    images = shapes_val_images(MAX_BATCH)
    return images, reference_outputs(load_model("shapes-demo", None, None), images)


def first(outputs: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    return {name: value[:count] for name, value in outputs.items()}


def io_shapes(path: Path) -> dict[str, list[int | str]]:
    graph = onnx.load(path, load_external_data=False).graph
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.input, *graph.output]}


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_one_graph_runs_every_batch_like_pytorch(
    shapes_demo_graph: Callable[..., Path], shapes_reference: tuple[np.ndarray, dict[str, np.ndarray]], plugins: str
) -> None:
    """shapes-demo exported at batch 1, converted with --max-batch 5: run at 1, 2, 3 and 5 images."""
    images, reference = shapes_reference
    deploy = shapes_demo_graph(1, plugins, "--max-batch", str(MAX_BATCH))
    assert io_shapes(deploy) == {
        "images": [BATCH_DIM, 3, 128, 128],
        "image_sizes": [BATCH_DIM, 2],
        "num_detections": [BATCH_DIM, 1],
        "boxes": [BATCH_DIM, 100, 4],
        "scores": [BATCH_DIM, 100],
        "classes": [BATCH_DIM, 100],
        "masks": [BATCH_DIM, 100, 28, 28],
    }
    record = read_deploy_record(onnx.load(deploy, load_external_data=False))
    assert record is not None and (record.batch, record.max_batch, record.opt_batch) == (5, 5, 5)
    assert record.batch_range() == (1, 5, 5)
    assert (reference["num_detections"] >= 5).all()
    for batch in BATCHES:
        assert_matches(run_deploy(deploy, images[:batch]), first(reference, batch))


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_a_resnet18_fpn_exported_at_batch_two_runs_every_batch_like_pytorch(
    resnet18_plain: Case, tmp_path: Path, plugins: str
) -> None:
    """A ResNet-18 FPN with random weights made to detect (tests/detection_support.py), from a plain export of 2
    images, as a dynamic-batch graph up to 5."""
    case = resnet18_plain
    images = np.concatenate([case.images, letterboxed_images(3, 320, 480, seed=12)])
    reference = reference_outputs(case.model, images)
    assert (reference["num_detections"] >= 1).all(), reference["num_detections"]
    deploy = tmp_path / f"deploy.{plugins}.onnx"
    assert maskrt(surgery(case.exported, deploy, "--plugins", plugins, "--max-batch", str(MAX_BATCH))) == 0
    for batch in BATCHES:
        assert_matches(run_deploy(deploy, images[:batch]), first(reference, batch))


def test_a_plain_export_at_batch_one_answers_like_pytorch_at_batch_four(mobilenet_plain: Case, tmp_path: Path) -> None:
    """torch.onnx.export(model, ([image],)) of a MobileNetV3 FPN, converted with --max-batch 4 and run on four images
    at once, against the model's own model(four images)."""
    case = mobilenet_plain
    images = np.concatenate([case.images, letterboxed_images(3, 320, 480, seed=13)])
    reference = reference_outputs(case.model, images)
    deploy = tmp_path / "deploy.onnx"
    assert maskrt(surgery(case.exported, deploy, "--plugins", "native", "--max-batch", "4")) == 0
    assert io_shapes(deploy)["images"] == [BATCH_DIM, 3, 320, 480]
    assert (reference["num_detections"] >= 1).all(), reference["num_detections"]
    assert_matches(run_deploy(deploy, images), reference)


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_the_fp16_and_int8_graphs_keep_the_batch_and_answer_within_their_tolerances(
    shapes_demo_graph: Callable[..., Path],
    shapes_reference: tuple[np.ndarray, dict[str, np.ndarray]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    plugins: str,
) -> None:
    """`trt-convert --onnx-only` of a dynamic-batch graph: FP16 (ONNX Runtime computing what an FP16 engine stores,
    fp16_rounding_model) and INT8 calibrated on 8 train images in batches of 5 and 3, against PyTorch with
    tests/test_precision.py's tolerances (FP16: box IoU 0.99, scores 0.01, masks 0.005; INT8: 0.9, 0.1, 0.05)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    images, reference = shapes_reference
    deploy = shapes_demo_graph(1, plugins, "--max-batch", str(MAX_BATCH))
    assert maskrt(["shapes", "--count", "8", "--seed", "0", "-o", str(tmp_path / "train")]) == 0
    fp16, int8 = tmp_path / "model.fp16.onnx", tmp_path / "model.int8.onnx"
    onnx_only = ["convert", str(deploy), "--onnx-only"]
    assert maskrt([*onnx_only, "--precision", "fp16", "-o", str(fp16)]) == 0
    calibration = ["--calib-images", str(tmp_path / "train"), "--calib-count", "8"]
    assert maskrt([*onnx_only, "--precision", "int8", *calibration, "-o", str(int8)]) == 0
    for graph in (fp16, int8):
        assert io_shapes(graph) == io_shapes(deploy)
    rounded = tmp_path / "model.fp16.rounded.onnx"
    onnx.save(fp16_rounding_model(onnx.load(fp16)), rounded)
    for batch in BATCHES:
        expected = first(reference, batch)
        assert_close(expected, run_deploy(rounded, images[:batch]), iou=0.99, score=0.01, mask=0.005)
        assert_close(expected, run_deploy(int8, images[:batch]), iou=0.9, score=0.1, mask=0.05)


def test_the_predictor_runs_up_to_the_maximum_without_padding(shapes_demo_graph: Callable[..., Path]) -> None:
    """Seven frames on a graph of up to 5: runs of 5 and 2 images, each frame answered as the static batch-1 graph
    answers it alone."""
    predictor = Predictor(shapes_demo_graph(1, "native", "--max-batch", str(MAX_BATCH)))
    assert (predictor.info.batch, predictor.info.dynamic_batch) == (MAX_BATCH, True)
    fed: list[tuple[int, ...]] = []
    run = predictor.backend.run
    predictor.backend.run = lambda feeds, outputs=None: (fed.append(feeds["images"].shape), run(feeds, outputs))[1]  # type: ignore[method-assign]
    frames = [render_sample(seed=1, index=i, size=128)[0] for i in range(7)]
    found = predictor(frames)
    assert [shape[0] for shape in fed] == [5, 2]
    alone = Predictor(shapes_demo_graph(1, "native"))
    assert not alone.info.dynamic_batch
    for frame, detections in zip(frames, found):
        expected = alone(frame)
        assert not isinstance(expected, list)
        assert list(detections.labels) == list(expected.labels)
        np.testing.assert_allclose(detections.boxes, expected.boxes, atol=1e-3)
        np.testing.assert_allclose(detections.scores, expected.scores, atol=1e-4)


def test_bench_measures_each_batch(shapes_demo_graph: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    deploy = shapes_demo_graph(1, "native", "--max-batch", str(MAX_BATCH))
    capsys.readouterr()
    argv = ["bench", str(deploy), "--batch", "1", "2", "4", "--iterations", "2", "--warmup", "0", "--threads", "1", "--json"]
    assert maskrt(argv) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [(r["batch"], r["dynamic_batch"]) for r in reports] == [(1, True), (2, True), (4, True)]
    assert all(r["images_per_second"] > 0 for r in reports)


def test_lint_checks_a_dynamic_batch_graph_at_its_maximum(
    shapes_demo_graph: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    deploy = shapes_demo_graph(1, "maskrt", "--max-batch", str(MAX_BATCH))
    capsys.readouterr()
    assert maskrt(["lint", str(deploy)]) == 0
    assert f"static shapes (batch 1 to {MAX_BATCH}, checked at {MAX_BATCH})" in capsys.readouterr().err


def topk_graph(k: int, dims: list[int | str]) -> gs.Graph:
    scores = gs.Variable("scores", np.float32, dims)
    graph = gs.Graph(inputs=[scores], opset=17)
    values, indices = graph.layer(op="TopK", inputs=[scores, gs.Constant("k", np.array([k], np.int64))], outputs=["values", "indices"], attrs={"axis": 1})
    values.dtype, indices.dtype = np.float32, np.int64
    graph.outputs = [values]
    infer_shapes(graph)
    return graph


def test_lint_takes_a_symbolic_batch_and_nothing_else_symbolic() -> None:
    assert lint_graph(topk_graph(100, [BATCH_DIM, 6000]), max_batch=4) == []
    over = lint_graph(topk_graph(5000, [BATCH_DIM, 6000]), max_batch=4)
    assert [p.kind for p in over] == ["over a TensorRT limit"] and "k = 5000" in over[0].what
    other = lint_graph(topk_graph(100, [BATCH_DIM, "candidates"]), max_batch=4)
    assert other and "only the batch, the first dimension, may be symbolic" in other[0].what
    static = lint_graph(topk_graph(100, [BATCH_DIM, 6000]))  # no maximum: a symbolic batch is not static
    assert static and all(p.kind == "not static" for p in static)


def folded_fpn_sizes(exported: Path, output: Path) -> int:
    """The export with its FPN's Resize sizes folded into constants, as onnxsim or onnxslim leave them (the traced
    batch among them), their values from ONNX Runtime run on the export; returns how many."""
    model = onnx.load(exported)
    graph = gs.import_onnx(model)
    resizes = [node for node in graph.nodes if node.op == "Resize" and node.name.startswith("/backbone/fpn/")]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(node.inputs[3].name) for node in resizes)
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {value.name: np.zeros([d.dim_value for d in value.type.tensor_type.shape.dim], np.float32) for value in model.graph.input}
    sizes = session.run([node.inputs[3].name for node in resizes], feeds)
    for node, value in zip(resizes, sizes):
        node.inputs[3] = gs.Constant(f"{node.name}/sizes", np.asarray(value, np.int64))
    onnx.save(gs.export_onnx(graph.cleanup()), output)
    return len(resizes)


def test_an_export_with_its_batch_folded_into_resize_sizes_is_rewritten(
    shapes_demo_export: Path, shapes_reference: tuple[np.ndarray, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    images, reference = shapes_reference
    folded, deploy = tmp_path / "folded.onnx", tmp_path / "deploy.onnx"
    assert folded_fpn_sizes(shapes_demo_export, folded) == 3
    assert maskrt(surgery(folded, deploy, "--plugins", "native", "--max-batch", str(MAX_BATCH))) == 0
    for batch in (2, 5):
        assert_matches(run_deploy(deploy, images[:batch]), first(reference, batch))


def test_an_export_that_fixes_its_batch_otherwise_is_refused_naming_the_tensor(
    shapes_demo_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backbone map flattened over the batch and back, with the traced batch in both shapes."""
    graph = gs.import_onnx(onnx.load(shapes_demo_export))
    conv = next(node for node in graph.nodes if node.op == "Conv" and node.name.startswith("/backbone/body/"))
    output = conv.outputs[0]
    channels = int(conv.inputs[1].values.shape[0])
    flat = gs.Variable("/backbone/body/flattened", np.float32)
    restored = gs.Variable("/backbone/body/restored", np.float32)
    readers = list(output.outputs)
    graph.nodes += [
        gs.Node("Reshape", "/backbone/body/flatten", inputs=[output, gs.Constant("flat", np.array([channels, -1], np.int64))], outputs=[flat]),
        gs.Node("Reshape", "/backbone/body/restore", inputs=[flat, gs.Constant("back", np.array([1, channels, 64, 64], np.int64))], outputs=[restored]),
    ]
    for reader in readers:
        reader.inputs = [restored if tensor is output else tensor for tensor in reader.inputs]
    edited, deploy = tmp_path / "edited.onnx", tmp_path / "deploy.onnx"
    onnx.save(gs.export_onnx(graph.toposort()), edited)
    assert maskrt(surgery(edited, tmp_path / "static.onnx", "--plugins", "native")) == 0  # static, it converts
    capsys.readouterr()
    assert_refused(
        capsys,
        surgery(edited, deploy, "--plugins", "native", "--max-batch", "4"),
        deploy,
        "fixes the batch of tensor '/backbone/body/flattened'",
        "convert without --max-batch",
    )


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--max-batch", "0"], "--max-batch: must be at least 1, got 0"),
        (["--max-batch", "3", "--opt-batch", "4"], "--opt-batch must be between 1 and --max-batch 3, got 4"),
        (["--opt-batch", "2"], "--opt-batch tunes a dynamic-batch graph; give --max-batch too"),
    ],
)
def test_bad_batch_flags(
    shapes_demo_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], words: str
) -> None:
    output = tmp_path / "deploy.onnx"
    assert_refused(capsys, surgery(shapes_demo_export, output, *flags), output, words)
    engine = tmp_path / "model.engine"
    assert_refused(capsys, ["convert", str(shapes_demo_export), *flags, "-o", str(engine)], engine, words)
    assert not list(tmp_path.iterdir())


def test_max_batch_on_a_static_deploy_graph_is_refused(
    shapes_demo_graph: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "model.fp16.onnx"
    argv = ["convert", str(shapes_demo_graph(1, "native")), "--max-batch", "4", "--onnx-only", "-o", str(output)]
    capsys.readouterr()
    assert_refused(capsys, argv, output, "is a deploy graph of static batch 1", "convert the export with it")


def test_a_batch_above_the_maximum_at_run_time(
    shapes_demo_graph: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    deploy = shapes_demo_graph(1, "native", "--max-batch", str(MAX_BATCH))
    capsys.readouterr()
    assert maskrt(["bench", str(deploy), "--batch", "6", "--iterations", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--batch must be between 1 and the model's batch 5, got 6" in error
    backend = open_backend(deploy)
    six = {"images": shapes_val_images(6), "image_sizes": np.full((6, 2), 128, np.int32)}
    with pytest.raises(ValueError, match="a batch of 6 images; this dynamic-batch model runs 1 to 5"):
        backend.run(six)


def test_a_calibration_set_smaller_than_one_batch_writes_nothing(
    shapes_demo_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Four images for batches of up to 5: refused before surgery writes the deploy graph beside the engine."""
    assert maskrt(["shapes", "--count", "4", "--seed", "0", "-o", str(tmp_path / "train")]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    out.mkdir()
    engine = out / "model.engine"
    argv = ["convert", str(shapes_demo_export), "--max-batch", "5", "--precision", "int8", "-o", str(engine)]
    assert_refused(
        capsys,
        [*argv, "--calib-images", str(tmp_path / "train"), "--calib-count", "4"],
        engine,
        "4 calibration images are fewer than one batch of 5",
    )
    assert not list(out.iterdir())


def test_where_no_engine_can_be_built_the_trtexec_line_carries_the_profile(
    shapes_demo_graph: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No TensorRT here: trt-convert writes the FP16 graph, exits 3 and says how trtexec builds it, with the shapes
    of the optimization profile (--opt-batch 2 of a --max-batch 5 graph)."""
    deploy = shapes_demo_graph(1, "native", "--max-batch", str(MAX_BATCH))
    capsys.readouterr()
    engine = tmp_path / "model.engine"
    assert maskrt(["convert", str(deploy), "--precision", "fp16", "--opt-batch", "2", "-o", str(engine)]) == 3
    said = capsys.readouterr().err
    for flag, batch in (("--minShapes", 1), ("--optShapes", 2), ("--maxShapes", 5)):
        assert f"{flag}=images:{batch}x3x128x128,image_sizes:{batch}x2" in said, said
    assert io_shapes(tmp_path / "model.fp16.onnx")["images"] == [BATCH_DIM, 3, 128, 128]


def test_a_dynamic_batch_export_converts_with_a_maximum(
    shapes_reference: tuple[np.ndarray, dict[str, np.ndarray]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """shapes-demo exported with a symbolic batch (one [batch,3,H,W] input that forward() splits into the list
    torchvision takes): refused without --max-batch in one line saying to give it, and with it, every batch answers
    like PyTorch."""
    import torch

    from torchvision_reference import keep_input_size

    model = load_model("shapes-demo", None, None).eval()
    keep_input_size(model, 128, 128)
    torchvision_class = type(model)

    class OneTensor(torchvision_class):  # type: ignore[misc, valid-type]
        def forward(self, images: torch.Tensor) -> object:
            return torchvision_class.forward(self, list(images))

    model.__class__ = OneTensor
    exported = tmp_path / "model.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 3, 128, 128),), exported, opset_version=17, dynamo=False,
                          input_names=["images"], dynamic_axes={"images": {0: "batch"}})
    static, deploy = tmp_path / "static.onnx", tmp_path / "deploy.onnx"
    assert_refused(capsys, surgery(exported, static, "--plugins", "native"), static, "dynamic batch size", "give --max-batch N")
    assert maskrt(surgery(exported, deploy, "--plugins", "native", "--max-batch", str(MAX_BATCH))) == 0
    images, reference = shapes_reference
    for batch in BATCHES:
        assert_matches(run_deploy(deploy, images[:batch]), first(reference, batch))
