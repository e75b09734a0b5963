"""`maskrt lint`: passes deploy graphs, names what makes other graphs unfit for a static TensorRT build, and knows
what each TensorRT target parses and where TensorRT's limits lie."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch

from maskrt.cli.main import main as maskrt
from maskrt.convert.graphs import Emitter, infer_shapes
from maskrt.convert.lint import lint_graph
from maskrt.convert.native_ops import batched_nms
from maskrt.convert.targets import TARGETS
from maskrt.contracts.plugins import BatchedNMSAttrs

from detection_support import Case


def lint(capsys: pytest.CaptureFixture[str], path: Path, *flags: str) -> tuple[int, str]:
    code = maskrt(["lint", str(path), *flags])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_deploy_graphs_pass(
    resnet18_plain: Case, converted: Callable[[Case, str], Path], plugins: str, capsys: pytest.CaptureFixture[str]
) -> None:
    deploy = converted(resnet18_plain, plugins)
    capsys.readouterr()
    code, report = lint(capsys, deploy)
    assert code == 0 and f"ok for TensorRT {'8.5' if plugins == 'native' else '10'} " in report, report


def test_a_plain_export_fails_with_its_data_dependent_ops_summarised_by_kind(
    resnet18_plain: Case, capsys: pytest.CaptureFixture[str]
) -> None:
    code, summary = lint(capsys, resnet18_plain.exported)
    assert code == 2
    total = int(re.search(r": not ready for TensorRT 8\.5: (\d+) problems \(", summary.splitlines()[-1])[1])
    kinds = [line for line in summary.splitlines() if re.fullmatch(r"  [a-z0-9 -]+: \d+", line)]
    assert {k.split(":")[0].strip() for k in kinds} >= {"not static", "data-dependent"}
    assert sum(int(k.rsplit(": ", 1)[1]) for k in kinds) == total > 100
    assert len(summary.splitlines()) <= 2 + len(kinds) * 5, summary  # the first three of each kind and a "more" line
    assert "more (--all lists every one)" in summary

    code, everything = lint(capsys, resnet18_plain.exported, "--all")
    listed = [line for line in everything.splitlines() if line.startswith("    ")]
    assert code == 2 and len(listed) == total and "more (--all" not in everything
    for what in ("NonZero", "Loop", "If", "not static"):
        assert what in everything


def test_an_empty_file_and_a_model_without_nodes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty, nodeless = tmp_path / "empty.onnx", tmp_path / "nodeless.onnx"
    empty.touch()
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "nothing", [], [])), nodeless)
    for path, expected in ((empty, "empty file, not an ONNX model"), (nodeless, "an ONNX model without nodes")):
        code, error = lint(capsys, path)
        [line] = error.strip().splitlines()
        assert code == 2 and line.startswith(f"maskrt lint: error: {path}: {expected}"), line


def test_unsupported_ops_int64_outputs_and_dynamic_shapes_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = gs.Variable("images", np.float32, [1, 3, "height", 8])
    unique = gs.Variable("unique_values", np.float32)
    count = gs.Variable("count", np.int64, [1])
    graph = gs.Graph(
        nodes=[
            gs.Node("Unique", "unique_node", inputs=[images], outputs=[unique]),
            gs.Node("Shape", "shape_node", inputs=[unique], outputs=[count]),
            gs.Node("Det", "det_node", inputs=[images], outputs=[gs.Variable("det", np.float32)]),
        ],
        inputs=[images],
        outputs=[count],
        opset=17,
    )
    path = tmp_path / "bad.onnx"
    onnx.save(gs.export_onnx(graph), path)
    code, report = lint(capsys, path)
    assert code == 2
    assert "unique_node" in report and "depends on the data" in report
    assert "det_node" in report and "not in TensorRT 8.5's ONNX operator matrix" in report
    assert "count: int64 graph input/output; TensorRT 8.5 needs int32" in report
    assert "images" in report and "not static" in report
    code, report = lint(capsys, path, "--target", "trt10")  # TensorRT 10 takes int64 as it is
    assert code == 2 and "int64 graph input/output" not in report and "det_node" in report


def _save(tmp_path: Path, name: str, graph: gs.Graph) -> Path:
    path = tmp_path / f"{name}.onnx"
    onnx.save(gs.export_onnx(graph), path)
    return path


def _one_op(tmp_path: Path, op: str, opset: int, inputs: list[gs.Tensor], **attrs: object) -> Path:
    x = inputs[0]
    y = gs.Variable("y", np.float32, x.shape)
    node = gs.Node(op, f"{op.lower()}_node", attrs, inputs, [y])
    return _save(tmp_path, op, gs.Graph(nodes=[node], inputs=[x], outputs=[y], opset=opset))


@pytest.mark.parametrize(
    ("op", "opset", "first"),
    [("LayerNormalization", 17, "trt8.6"), ("Gelu", 20, "trt10"), ("Swish", 24, "trt11")],
)
def test_each_target_has_the_operators_of_its_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], op: str, opset: int, first: str
) -> None:
    """Ops that onnx-tensorrt's operator matrix adds in 8.6, 10 and 11: refused by the TensorRT before, passed from."""
    x = gs.Variable("x", np.float32, [1, 4, 8])
    inputs = [x, gs.Constant("scale", np.ones(8, np.float32)), gs.Constant("bias", np.zeros(8, np.float32))]
    path = _one_op(tmp_path, op, opset, inputs if op == "LayerNormalization" else [x])
    targets = ["trt8.5", "trt8.6", "trt10", "trt11"]
    version = first.removeprefix("trt")
    for target in targets:
        code, report = lint(capsys, path, "--target", target)
        if targets.index(target) < targets.index(first):
            assert code == 2 and f"ONNX operator matrix (from TensorRT {version} on)" in report, report
        else:
            assert code == 0 and "ok for TensorRT" in report, report


def test_roi_align_is_in_every_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """RoiAlign joined onnx-tensorrt's matrix in 8.5 (the ROIAlign_TRT plugin), the oldest TensorRT maskrt targets."""
    features = gs.Variable("features", np.float32, [1, 8, 16, 16])
    rois = gs.Constant("rois", np.array([[0, 0, 8, 8]], np.float32))
    index = gs.Constant("index", np.zeros(1, np.int64))
    pooled = gs.Variable("pooled", np.float32, [1, 8, 7, 7])
    node = gs.Node("RoiAlign", "roi_align", {"output_height": 7, "output_width": 7}, [features, rois, index], [pooled])
    path = _save(tmp_path, "roi_align", gs.Graph(nodes=[node], inputs=[features], outputs=[pooled], opset=17))
    for target in ("trt8.5", "trt8.6", "trt10", "trt11"):
        assert lint(capsys, path, "--target", target)[0] == 0


@pytest.mark.parametrize(("k", "fires"), [(3840, False), (3841, True)])
def test_topk_above_tensorrt_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str], k: int, fires: bool) -> None:
    scores = gs.Variable("scores", np.float32, [1, 5000])
    values, indices = gs.Variable("values", np.float32, [1, k]), gs.Variable("indices", np.int64, [1, k])
    k_input = gs.Constant("k", np.array([k], np.int64))
    node = gs.Node("TopK", "proposal_topk", {"axis": 1}, [scores, k_input], [values, indices])
    path = _save(tmp_path, "topk", gs.Graph(nodes=[node], inputs=[scores], outputs=[values], opset=17))
    for target in ("trt8.5", "trt11"):
        code, report = lint(capsys, path, "--target", target)
        assert code == (2 if fires else 0), report
        assert (f"TopK 'proposal_topk': k = {k}, above the 3840 of TensorRT's TopK" in report) == fires


@pytest.mark.parametrize(("boxes", "fires"), [(5000, False), (5001, True)])
def test_nms_over_more_boxes_than_tensorrt_considers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], boxes: int, fires: bool
) -> None:
    """A native-mode BatchedNMS, as surgery emits it, over `boxes` candidates of one image."""
    graph = gs.Graph(opset=17)
    candidates = gs.Variable("candidates", np.float32, [1, boxes, 4])
    scores = gs.Variable("candidate_scores", np.float32, [1, boxes, 2])
    attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.05, max_output=100)
    outputs = batched_nms(Emitter(graph, "/nms"), candidates, scores, attrs, boxes, 2, per_class_boxes=False)
    graph.inputs, graph.outputs = [candidates, scores], outputs[:4]
    for tensor, dtype in zip(graph.outputs, (np.int32, np.float32, np.float32, np.int32)):
        tensor.dtype = dtype
    path = _save(tmp_path, "nms", graph)
    code, report = lint(capsys, path)
    assert code == (2 if fires else 0), report
    limit = f"{boxes} boxes per batch item, above the 5000 that TensorRT's NonMaxSuppression considers"
    assert (limit in report) == fires


def test_plugin_nodes_need_tensorrt_10(
    resnet18_plain: Case, converted: Callable[[Case, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Plugin mode's default target, TensorRT 10, passes (test_deploy_graphs_pass); so does 11, and 8.6 does not."""
    deploy = converted(resnet18_plain, "maskrt")
    assert lint(capsys, deploy, "--target", "trt11")[0] == 0
    code, report = lint(capsys, deploy, "--target", "trt8.6")
    assert code == 2 and "plugin: 4" in report
    assert "maskrt plugins need TensorRT 10 or later (IPluginV3), not 8.6; use --plugins native" in report


@pytest.mark.slow
def test_resnet50_fpn_deploy_graphs_keep_within_tensorrt_limits(
    resnet50_fpn: Case, converted: Callable[[Case, str], Path]
) -> None:
    """At 800x1344 the RPN keeps 1000 proposals from each of P2..P5 and all 13x21x3 = 819 anchors of the pool level:
    4819 boxes into the proposal NonMaxSuppression, under TensorRT's 5000; the TopKs take k up to 1000, under 3840."""
    with torch.no_grad():
        levels = resnet50_fpn.model.backbone(torch.zeros(1, 3, 800, 1344)).values()
    anchors = [3 * level.shape[-2] * level.shape[-1] for level in levels]
    proposals = sum(min(1000, count) for count in anchors)
    assert proposals == 4819

    graph = gs.import_onnx(onnx.load(converted(resnet50_fpn, "native")))
    nms_boxes = sorted(node.inputs[0].shape[1] for node in graph.nodes if node.op == "NonMaxSuppression")
    assert nms_boxes == [1000, proposals]  # per batch item: the detection NMS runs one (image, class) per item
    topk = [int(node.inputs[1].values.ravel()[0]) for node in graph.nodes if node.op == "TopK"]
    assert sorted(topk) == sorted([*(min(1000, count) for count in anchors), 1000, 100])
    assert max(topk) <= 3840 and max(nms_boxes) <= 5000
    infer_shapes(graph)
    for target in ("trt8.5", "trt8.6", "trt10", "trt11"):
        assert not lint_graph(graph, TARGETS[target]), target
    plugin_mode = gs.import_onnx(onnx.load(converted(resnet50_fpn, "maskrt")))
    infer_shapes(plugin_mode)
    for target in ("trt10", "trt11"):
        assert not lint_graph(plugin_mode, TARGETS[target]), target
