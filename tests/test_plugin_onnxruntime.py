"""Deploy graphs with plugin nodes run on ONNX Runtime through cpu_session and answer like torchvision; bad plugin
nodes fail with a ValueError naming the node and what is wrong, before and while they run."""

from __future__ import annotations

import functools
import json
import resource
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plugin_support import (
    FP16_RELATIVE,
    FP32_TOLERANCE,
    assert_same_detections,
    batched_nms_graph,
    nms_cases,
    roi_align_cases,
    roi_align_graph,
    torchvision_batched_nms,
    torchvision_multilevel_roi_align,
)

from maskrt.contracts import plugins as contracts
from maskrt.plugins import cpu_session, onnxruntime_ops
from maskrt.contracts.plugins import BatchedNMSAttrs, MultilevelRoIAlignAttrs, onnx_attributes

ROI_ALIGN = onnx_attributes(MultilevelRoIAlignAttrs(output_size=7, sampling_ratio=2, aligned=0))
NMS = onnx_attributes(BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.05, max_output=10, background_class=0))
P2_TO_P5 = [[1, 8, 32, 32], [1, 8, 16, 16], [1, 8, 8, 8], [1, 8, 4, 4]]


@settings(max_examples=15, deadline=None)
@given(roi_align_cases(), st.sampled_from([np.float32, np.float16]))
def test_roi_align_node_matches_torchvision(
    case: tuple[np.ndarray, list[np.ndarray], MultilevelRoIAlignAttrs], dtype: type
) -> None:
    rois, features, attrs = case
    features = [level_map.astype(dtype) for level_map in features]
    model = roi_align_graph(onnx_attributes(attrs), rois.shape, [level_map.shape for level_map in features], dtype)
    (pooled,) = cpu_session(model).run(None, {"rois": rois, **{f"p{i}": m for i, m in enumerate(features)}})
    assert pooled.dtype == dtype
    rtol = FP16_RELATIVE if dtype == np.float16 else 0
    expected = torchvision_multilevel_roi_align(rois, features, attrs)
    np.testing.assert_allclose(pooled.astype(np.float32), expected, rtol=rtol, atol=FP32_TOLERANCE)


@settings(max_examples=15, deadline=None)
@given(nms_cases())
def test_nms_node_matches_torchvision(case: tuple[np.ndarray, np.ndarray, BatchedNMSAttrs]) -> None:
    boxes, scores, attrs = case
    outputs = cpu_session(batched_nms_graph(onnx_attributes(attrs), boxes.shape, scores.shape)).run(
        None, {"boxes": boxes, "scores": scores}
    )
    assert [output.dtype for output in outputs] == [np.int32, np.float32, np.float32, np.int32, np.int32]
    assert_same_detections(outputs, torchvision_batched_nms(boxes, scores, attrs), boxes, scores)


def test_nms_node_with_score_ties() -> None:
    rng = np.random.default_rng(5)
    boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [0, 0, 10, 10]], np.float32)[rng.integers(0, 3, (2, 12))]
    scores = rng.choice(np.array([0.25, 0.5], np.float32), (2, 12, 3))
    attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.0, max_output=36)
    outputs = cpu_session(batched_nms_graph(onnx_attributes(attrs), boxes.shape, scores.shape)).run(
        None, {"boxes": boxes, "scores": scores}
    )
    assert_same_detections(outputs, torchvision_batched_nms(boxes, scores, attrs), boxes, scores, ties=True)


def test_proposals_feed_roi_align_as_in_a_deploy_graph() -> None:
    # RPN-style NMS (levels as classes, shared boxes) whose kept boxes are pooled from P2..P5, padding rows included.
    rng = np.random.default_rng(11)
    corner = rng.integers(0, 100 * 4, (2, 40, 2)) / 4
    boxes = np.concatenate([corner, corner + rng.integers(4, 60 * 4, (2, 40, 2)) / 4], axis=-1).astype(np.float32)
    scores = (rng.permutation(2 * 40 * 4) / 320).reshape(2, 40, 4).astype(np.float32)
    nms_attrs = BatchedNMSAttrs(iou_threshold=0.7, score_threshold=0.0, max_output=30)
    roi_attrs = MultilevelRoIAlignAttrs(output_size=7, sampling_ratio=2, aligned=0)
    features = [rng.standard_normal((2, 8, 128 >> level, 128 >> level), dtype=np.float32) for level in range(2, 6)]
    graph = gs.import_onnx(batched_nms_graph(onnx_attributes(nms_attrs), boxes.shape, scores.shape))
    maps = [gs.Variable(f"p{i}", np.float32, list(level_map.shape)) for i, level_map in enumerate(features)]
    pooled = gs.Variable("pooled", np.float32)
    graph.nodes.append(
        gs.Node(
            contracts.ROI_ALIGN,
            "roi_align",
            onnx_attributes(roi_attrs),
            [graph.outputs[1], *maps],
            [pooled],
            domain=contracts.ONNX_DOMAIN,
        )
    )
    graph.inputs.extend(maps)
    graph.outputs.append(pooled)
    feeds = {"boxes": boxes, "scores": scores, **{f"p{i}": level_map for i, level_map in enumerate(features)}}
    outputs = cpu_session(gs.export_onnx(graph)).run(None, feeds)
    assert_same_detections(outputs[:5], torchvision_batched_nms(boxes, scores, nms_attrs), boxes, scores)
    expected = torchvision_multilevel_roi_align(outputs[1], features, roi_attrs)
    np.testing.assert_allclose(outputs[5], expected, rtol=0, atol=FP32_TOLERANCE)


def test_graph_without_plugins_runs_as_it_is() -> None:
    # onnx-graphsurgeon writes IR version 14 by default, newer than ONNX Runtime 1.31 reads.
    x = gs.Variable("x", np.float32, [2, 3])
    y = gs.Variable("y", np.float32, [2, 3])
    model = gs.export_onnx(gs.Graph([gs.Node("Relu", inputs=[x], outputs=[y])], [x], [y]))
    assert model.ir_version > onnxruntime_ops.MAX_IR_VERSION
    data = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    np.testing.assert_array_equal(cpu_session(model).run(None, {"x": data})[0], np.maximum(data, 0))


def test_the_file_and_the_model_stay_as_they_were(tmp_path: Path) -> None:
    model = roi_align_graph(ROI_ALIGN, [1, 3, 4], P2_TO_P5, np.float16)
    path = tmp_path / "deploy.onnx"
    onnx.save(model, path)
    before = path.read_bytes()
    serialized = model.SerializeToString()
    rois = np.array([[[0, 0, 20, 20], [4, 4, 60, 40], [10, 10, 12, 12]]], np.float32)
    feeds = {"rois": rois, **{f"p{i}": np.ones(shape, np.float16) for i, shape in enumerate(P2_TO_P5)}}
    for source in (path, str(path), model):
        (pooled,) = cpu_session(source).run(None, feeds)
        np.testing.assert_array_equal(pooled, np.ones((1, 3, 8, 7, 7), np.float16))
    assert path.read_bytes() == before
    assert model.SerializeToString() == serialized
    assert {node.domain for node in onnx.load(path).graph.node} == {contracts.ONNX_DOMAIN}


def test_not_an_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "deploy.onnx"
    path.write_bytes(b"not an onnx model at all")
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable ONNX model")):
        cpu_session(path)


def _without(attributes: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in attributes.items() if key != name}


def _nms_classes_as_rois() -> onnx.ModelProto:
    graph = gs.import_onnx(batched_nms_graph(NMS, [1, 20, 4], [1, 20, 3]))
    maps = [gs.Variable(f"p{i}", np.float32, shape) for i, shape in enumerate(P2_TO_P5)]
    pooled = gs.Variable("pooled", np.float32)
    classes = graph.outputs[3]
    graph.nodes.append(
        gs.Node(contracts.ROI_ALIGN, "roi_align", ROI_ALIGN, [classes, *maps], [pooled], domain=contracts.ONNX_DOMAIN)
    )
    graph.inputs.extend(maps)
    graph.outputs.append(pooled)
    return gs.export_onnx(graph)


def _renamed_op(model: onnx.ModelProto, op_type: str) -> onnx.ModelProto:
    model.graph.node[0].op_type = op_type
    return model


BAD_NODES: dict[str, tuple[Callable[[], onnx.ModelProto], str]] = {
    "roi: missing output_size": (
        lambda: roi_align_graph(_without(ROI_ALIGN, "output_size"), [1, 5, 4], P2_TO_P5),
        "MultilevelRoIAlign node 'roi_align': attribute 'output_size' is missing",
    ),
    "roi: negative sampling_ratio": (
        lambda: roi_align_graph({**ROI_ALIGN, "sampling_ratio": -1}, [1, 5, 4], P2_TO_P5),
        "MultilevelRoIAlign node 'roi_align': attribute 'sampling_ratio' = -1 is out of range",
    ),
    "roi: aligned 2": (
        lambda: roi_align_graph({**ROI_ALIGN, "aligned": 2}, [1, 5, 4], P2_TO_P5),
        "MultilevelRoIAlign node 'roi_align': attribute 'aligned' = 2 is out of range (expected 0 or 1)",
    ),
    "roi: fractional output_size": (
        lambda: roi_align_graph({**ROI_ALIGN, "output_size": 2.5}, [1, 5, 4], P2_TO_P5),
        "MultilevelRoIAlign node 'roi_align': attribute 'output_size' must be an integer, got 2.5",
    ),
    "roi: text canonical_scale": (
        lambda: roi_align_graph({**ROI_ALIGN, "canonical_scale": "large"}, [1, 5, 4], P2_TO_P5),
        "MultilevelRoIAlign node 'roi_align': attribute 'canonical_scale' must be a number, got 'large'",
    ),
    "roi: levels upside down": (
        lambda: roi_align_graph({**ROI_ALIGN, "min_level": 5, "max_level": 2}, [1, 5, 4], P2_TO_P5),
        "MultilevelRoIAlign node 'roi_align': attribute 'max_level' = 2 is below 'min_level' = 5",
    ),
    "roi: three maps for four levels": (
        lambda: roi_align_graph(ROI_ALIGN, [1, 5, 4], P2_TO_P5[:3]),
        "MultilevelRoIAlign node 'roi_align': expected rois and 4 feature maps (levels 2..5), got 4 inputs",
    ),
    "roi: rois of rank 2": (
        lambda: roi_align_graph(ROI_ALIGN, [5, 4], P2_TO_P5),
        "MultilevelRoIAlign node 'roi_align': input 'rois' must have rank 3, got rank 2",
    ),
    "roi: rois with 5 coordinates": (
        lambda: roi_align_graph(ROI_ALIGN, [1, 5, 5], P2_TO_P5),
        "MultilevelRoIAlign node 'roi_align': input 'rois' must end in a dimension of 4",
    ),
    "roi: FP16 rois": (
        lambda: roi_align_graph(ROI_ALIGN, [1, 5, 4], P2_TO_P5, rois_dtype=np.float16),
        "MultilevelRoIAlign node 'roi_align': input 'rois' must be float32, got float16",
    ),
    "roi: int64 maps": (
        lambda: roi_align_graph(ROI_ALIGN, [1, 5, 4], P2_TO_P5, dtype=np.int64),
        "MultilevelRoIAlign node 'roi_align': input 'feature map P2' must be float32 or float16, got int64",
    ),
    "roi: maps of another batch": (
        lambda: roi_align_graph(ROI_ALIGN, [2, 5, 4], P2_TO_P5),
        "MultilevelRoIAlign node 'roi_align': input 'feature map P2' has B = 1 but input 'rois' has B = 2",
    ),
    "roi: maps with different channels": (
        lambda: roi_align_graph(ROI_ALIGN, [1, 5, 4], [*P2_TO_P5[:3], [1, 4, 4, 4]]),
        "MultilevelRoIAlign node 'roi_align': input 'feature map P5' has C = 4 but input 'feature map P2' has C = 8",
    ),
    "roi: no plugin_namespace": (
        lambda: roi_align_graph(_without(ROI_ALIGN, "plugin_namespace"), [1, 5, 4], P2_TO_P5),
        "MultilevelRoIAlign node 'roi_align': attribute 'plugin_namespace' = '' (expected 'maskrt')",
    ),
    "roi: rois from the classes output": (
        _nms_classes_as_rois,  # the NMS node's outputs are known to the check of the node they feed
        "MultilevelRoIAlign node 'roi_align': input 'rois' must have rank 3, got rank 2 [1, 10]",
    ),
    "nms: missing iou_threshold": (
        lambda: batched_nms_graph(_without(NMS, "iou_threshold"), [1, 20, 4], [1, 20, 3]),
        "BatchedNMS node 'nms': attribute 'iou_threshold' is missing",
    ),
    "nms: iou_threshold 1.5": (
        lambda: batched_nms_graph({**NMS, "iou_threshold": 1.5}, [1, 20, 4], [1, 20, 3]),
        "BatchedNMS node 'nms': attribute 'iou_threshold' = 1.5 is out of range (expected between 0 and 1)",
    ),
    "nms: max_output 0": (
        lambda: batched_nms_graph({**NMS, "max_output": 0}, [1, 20, 4], [1, 20, 3]),
        "BatchedNMS node 'nms': attribute 'max_output' = 0 is out of range",
    ),
    "nms: background_class past the classes": (
        lambda: batched_nms_graph({**NMS, "background_class": 3}, [1, 20, 4], [1, 20, 3]),
        "BatchedNMS node 'nms': attribute 'background_class' = 3 is out of range for 3 classes",
    ),
    "nms: boxes of rank 2": (
        lambda: batched_nms_graph(NMS, [20, 4], [1, 20, 3]),
        "BatchedNMS node 'nms': input 'boxes' must have rank 3 [B,N,4] or 4 [B,N,C,4], got rank 2",
    ),
    "nms: float64 boxes": (
        lambda: batched_nms_graph(NMS, [1, 20, 4], [1, 20, 3], boxes_dtype=np.float64),
        "BatchedNMS node 'nms': input 'boxes' must be float32, got float64",
    ),
    "nms: boxes for 2 classes, scores for 3": (
        lambda: batched_nms_graph(NMS, [1, 20, 2, 4], [1, 20, 3]),
        "BatchedNMS node 'nms': boxes have 2 classes but scores have 3",
    ),
    "nms: boxes for 19 rows, scores for 20": (
        lambda: batched_nms_graph(NMS, [1, 19, 4], [1, 20, 3]),
        "BatchedNMS node 'nms': input 'boxes' has N = 19 but input 'scores' has N = 20",
    ),
    "nms: four outputs": (
        lambda: batched_nms_graph(NMS, [1, 20, 4], [1, 20, 3], outputs=("num", "boxes_out", "scores_out", "classes")),
        "BatchedNMS node 'nms': expected 5 output(s) (num, boxes, scores, classes, indices), got 4",
    ),
    "nms: plugin_version 2": (
        lambda: batched_nms_graph({**NMS, "plugin_version": "2"}, [1, 20, 4], [1, 20, 3]),
        "BatchedNMS node 'nms': attribute 'plugin_version' = '2' (expected '1')",
    ),
    "unknown op in the plugin domain": (
        lambda: _renamed_op(batched_nms_graph(NMS, [1, 20, 4], [1, 20, 3]), "EfficientNMS"),
        "nms: unknown maskrt plugin op 'EfficientNMS'",
    ),
}


@pytest.mark.parametrize(("build", "message"), BAD_NODES.values(), ids=BAD_NODES.keys())
def test_bad_plugin_node_is_refused_before_the_session(build: Callable[[], onnx.ModelProto], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        cpu_session(build())


# What each custom op receives from ONNX Runtime: its input arrays and the node's attributes as JSON.
BAD_RUNS: dict[str, tuple[Callable[..., Any], list[np.ndarray], dict[str, Any], str]] = {
    "roi: missing output_size": (
        onnxruntime_ops.run_roi_align,
        [np.zeros((1, 5, 4), np.float32), *(np.zeros(shape, np.float32) for shape in P2_TO_P5)],
        _without(ROI_ALIGN, "output_size"),
        "MultilevelRoIAlign node 'roi_align': attribute 'output_size' is missing",
    ),
    "roi: three maps for four levels": (
        onnxruntime_ops.run_roi_align,
        [np.zeros((1, 5, 4), np.float32), *(np.zeros(shape, np.float32) for shape in P2_TO_P5[:3])],
        ROI_ALIGN,
        "MultilevelRoIAlign node 'roi_align': expected rois and 4 feature maps (levels 2..5), got 4 inputs",
    ),
    "roi: rois of rank 2": (
        onnxruntime_ops.run_roi_align,
        [np.zeros((5, 4), np.float32), *(np.zeros(shape, np.float32) for shape in P2_TO_P5)],
        ROI_ALIGN,
        "MultilevelRoIAlign node 'roi_align': input 'rois' must have rank 3, got rank 2",
    ),
    "nms: iou_threshold 1.5": (
        onnxruntime_ops.run_batched_nms,
        [np.zeros((1, 20, 4), np.float32), np.zeros((1, 20, 3), np.float32)],
        {**NMS, "iou_threshold": 1.5},
        "BatchedNMS node 'nms': attribute 'iou_threshold' = 1.5 is out of range (expected between 0 and 1)",
    ),
    "nms: boxes for 2 classes, scores for 3": (
        onnxruntime_ops.run_batched_nms,
        [np.zeros((1, 20, 2, 4), np.float32), np.zeros((1, 20, 3), np.float32)],
        NMS,
        "BatchedNMS node 'nms': boxes have 2 classes but scores have 3",
    ),
    "nms: boxes of another batch": (
        onnxruntime_ops.run_batched_nms,
        [np.zeros((2, 20, 4), np.float32), np.zeros((1, 20, 3), np.float32)],
        NMS,
        "BatchedNMS node 'nms': input 'boxes' has B = 2 but input 'scores' has B = 1",
    ),
    "nms: background_class past the classes": (
        onnxruntime_ops.run_batched_nms,
        [np.zeros((1, 20, 4), np.float32), np.zeros((1, 20, 2), np.float32)],
        NMS | {"background_class": 2},
        "BatchedNMS node 'nms': attribute 'background_class' = 2 is out of range for 2 classes",
    ),
}


@pytest.mark.parametrize(("op", "inputs", "attributes", "message"), BAD_RUNS.values(), ids=BAD_RUNS.keys())
def test_custom_op_checks_its_node_at_run_time(
    op: Callable[..., Any], inputs: list[np.ndarray], attributes: dict[str, Any], message: str
) -> None:
    node_name = "roi_align" if op is onnxruntime_ops.run_roi_align else "nms"
    with pytest.raises(ValueError, match=re.escape(message)):
        op(*inputs, attributes=json.dumps(attributes), node_name=node_name)


def test_symbolic_dimensions_are_checked_when_the_graph_runs(tmp_path: Path) -> None:
    # Class counts that are symbolic in the graph pass cpu_session and only disagree at run time. An exception in an
    # onnxruntime-extensions op aborts the process, so this runs in a child process and reads its last words.
    path = tmp_path / "deploy.onnx"
    onnx.save(batched_nms_graph(NMS, [1, 20, "boxes_classes", 4], [1, 20, "score_classes"]), path)
    script = f"""
import numpy as np
from maskrt.plugins import cpu_session
session = cpu_session({str(path)!r})
session.run(None, {{"boxes": np.zeros((1, 20, 2, 4), np.float32), "scores": np.zeros((1, 20, 3), np.float32)}})
"""
    no_core_dump = functools.partial(resource.setrlimit, resource.RLIMIT_CORE, (0, 0))
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, preexec_fn=no_core_dump
    )
    assert child.returncode != 0
    assert "BatchedNMS node 'nms': boxes have 2 classes but scores have 3" in child.stderr
