"""For the plugin tests: torchvision as the oracle, random cases, and small ONNX graphs holding one plugin node."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any
from unittest import mock

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
import torchvision
from hypothesis import strategies as st
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

from maskrt.contracts import plugins as contracts
from maskrt.contracts.plugins import BatchedNMSAttrs, MultilevelRoIAlignAttrs
from maskrt.plugins.reference import NMSOutput


FP32_TOLERANCE = 1e-5
# Rounding a float32 result to FP16 moves it by at most half a unit in the last place: 2^-11 relative.
FP16_RELATIVE = 2.0**-11

coordinate = st.one_of(
    st.floats(-64, 256, width=32),
    st.integers(-64, 256).map(float),  # whole pixels: samples land exactly on pixel edges and map borders
)
box_side = st.one_of(st.just(0.0), st.floats(-16, 256, width=32), st.sampled_from([0.5, 1.0, 4.0, 224.0, 448.0]))


@st.composite
def roi_align_cases(draw: st.DrawFn) -> tuple[np.ndarray, list[np.ndarray], MultilevelRoIAlignAttrs]:
    """rois [B,R,4] inside, across and outside the maps, empty or inverted; float32 maps; any valid attributes."""
    min_level = draw(st.integers(1, 4))
    attrs = MultilevelRoIAlignAttrs(
        output_size=draw(st.integers(1, 7)),
        sampling_ratio=draw(st.sampled_from([0, 1, 2, 3])),
        aligned=draw(st.integers(0, 1)),
        canonical_scale=draw(st.sampled_from([224.0, 56.0, 100.5])),
        canonical_level=draw(st.integers(2, 5)),
        min_level=min_level,
        max_level=min_level + draw(st.integers(0, 3)),
        eps=draw(st.sampled_from([1e-6, 0.0, 0.25])),
    )
    batch, num_rois, channels = draw(st.integers(1, 2)), draw(st.integers(0, 6)), draw(st.integers(1, 3))
    count = batch * num_rois
    corners = draw(st.lists(st.tuples(coordinate, coordinate, box_side, box_side), min_size=count, max_size=count))
    rois = np.array([(x, y, x + w, y + h) for x, y, w, h in corners], np.float32).reshape(batch, num_rois, 4)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # Map sizes need not follow the strides: the plugin only uses 2^-level, and odd sizes test the borders.
    features = [
        rng.standard_normal((batch, channels, draw(st.integers(1, 12)), draw(st.integers(1, 12))), dtype=np.float32)
        for _ in range(attrs.num_levels)
    ]
    return rois, features, attrs


@st.composite
def nms_cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, BatchedNMSAttrs]:
    """Shared [B,N,4] or per-class [B,N,C,4] boxes, some empty or inverted, distinct scores; any valid attributes."""
    batch, num_boxes, num_classes = draw(st.integers(1, 2)), draw(st.integers(0, 14)), draw(st.integers(1, 6))
    attrs = BatchedNMSAttrs(
        iou_threshold=draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0])),
        score_threshold=draw(st.sampled_from([-1.0, 0.0, 0.25, 0.9])),
        max_output=draw(st.integers(1, 20)),
        class_agnostic=draw(st.integers(0, 1)),
        background_class=draw(st.integers(-1, num_classes - 1)),
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    per_class = draw(st.booleans())
    box_shape = (batch, num_boxes, num_classes) if per_class else (batch, num_boxes)
    # Quarter-pixel coordinates >= 0: torchvision's batched_nms offsets each class's boxes by a multiple of the
    # largest coordinate, which is exact for them and keeps classes apart (x1 >= 0 as torchvision requires).
    corner = rng.integers(0, 64 * 4, (*box_shape, 2)) / 4
    side = rng.integers(-2 * 4, 48 * 4, (*box_shape, 2)) / 4  # some empty and some inverted boxes
    side[rng.random(box_shape) < 0.2] = 0
    boxes = np.concatenate([corner, np.maximum(corner + side, 0)], axis=-1).astype(np.float32)
    # Distinct scores, so the order of the output is defined without tie-breaking.
    scores = (rng.permutation(batch * num_boxes * num_classes) + 1) / (batch * num_boxes * num_classes + 1)
    return boxes, scores.reshape(batch, num_boxes, num_classes).astype(np.float32), attrs


def torchvision_multilevel_roi_align(
    rois: np.ndarray, features: Sequence[np.ndarray], attrs: MultilevelRoIAlignAttrs
) -> np.ndarray:
    """torchvision's MultiScaleRoIAlign on the plugin's inputs → [B,R,C,S,S] float32.

    The scales are the plugin's strides 2^-level rather than inferred from an image size, the LevelMapper gets the
    node's eps, and aligned=1 goes through torchvision's own roi_align(aligned=True), which MultiScaleRoIAlign does not
    expose. FP16 maps are widened to float32 (exactly) because the plugin accumulates in float32, while torchvision's
    CPU kernel would compute in half precision.
    """
    levels = range(attrs.min_level, attrs.max_level + 1)
    names = [f"p{level}" for level in levels]
    pooler = MultiScaleRoIAlign(
        names,
        attrs.output_size,
        attrs.sampling_ratio,
        canonical_scale=attrs.canonical_scale,
        canonical_level=attrs.canonical_level,
    )
    pooler.scales = [2.0**-level for level in levels]
    pooler.map_levels = LevelMapper(
        attrs.min_level, attrs.max_level, attrs.canonical_scale, attrs.canonical_level, attrs.eps
    )
    maps = {name: torch.from_numpy(np.asarray(level_map, np.float32)) for name, level_map in zip(names, features)}
    boxes = [torch.from_numpy(np.asarray(image_rois, np.float32)) for image_rois in rois]
    roi_align = functools.partial(torchvision.ops.roi_align, aligned=bool(attrs.aligned))
    with mock.patch.object(torchvision.ops.poolers, "roi_align", roi_align):
        pooled = pooler(maps, boxes, image_shapes=[])
    size = attrs.output_size
    return pooled.numpy().reshape(rois.shape[0], rois.shape[1], features[0].shape[1], size, size)


def torchvision_batched_nms(
    boxes: np.ndarray, scores: np.ndarray, attrs: BatchedNMSAttrs
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image, the (rows n, classes c) that torchvision's batched_nms keeps, its first K, best first.

    Candidates follow the contract: c is not the background class and score > score_threshold. Thresholds are
    float32, as the plugin's fields are.
    """
    kept = []
    for image_boxes, image_scores in zip(boxes, scores):
        candidate = image_scores > np.float32(attrs.score_threshold)
        if 0 <= attrs.background_class < image_scores.shape[1]:
            candidate[:, attrs.background_class] = False
        rows, classes = np.nonzero(candidate)
        candidate_boxes = image_boxes[rows] if image_boxes.ndim == 2 else image_boxes[rows, classes]
        groups = np.zeros_like(classes) if attrs.class_agnostic else classes
        keep = torchvision.ops.batched_nms(
            torch.from_numpy(np.ascontiguousarray(candidate_boxes, np.float32)),
            torch.from_numpy(image_scores[rows, classes]),
            torch.from_numpy(groups),
            float(np.float32(attrs.iou_threshold)),
        )[: attrs.max_output].numpy()
        kept.append((rows[keep], classes[keep]))
    return kept


def assert_same_detections(
    output: NMSOutput | Sequence[np.ndarray],
    oracle: list[tuple[np.ndarray, np.ndarray]],
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    ties: bool = False,
) -> None:
    """The plugin's outputs hold the oracle's detections, zero past num; with score ties, as a set of rows.

    torch sorts ties in no particular order, so with ties only the set of (box, score, class) rows is compared.
    """
    num, out_boxes, out_scores, out_classes, out_indices = output
    top = out_scores.shape[1]
    for image, (rows, classes) in enumerate(oracle):
        count = len(rows)
        assert num[image, 0] == count
        expected_boxes = boxes[image][rows] if boxes.ndim == 3 else boxes[image][rows, classes]
        expected_scores = scores[image][rows, classes]
        if ties:
            got = {(*out_boxes[image, i], out_scores[image, i], out_classes[image, i]) for i in range(count)}
            want = {(*expected_boxes[i], expected_scores[i], classes[i]) for i in range(count)}
            assert got == want
        else:
            np.testing.assert_array_equal(out_indices[image, :count], rows)
            np.testing.assert_array_equal(out_classes[image, :count], classes)
            np.testing.assert_array_equal(out_boxes[image, :count], expected_boxes)
            np.testing.assert_array_equal(out_scores[image, :count], expected_scores)
        for padding in (out_boxes, out_scores, out_classes, out_indices):
            assert not padding[image, count:top].any()


def roi_align_graph(
    attributes: Mapping[str, Any],
    rois_shape: Sequence[int | str],
    feature_shapes: Sequence[Sequence[int | str]],
    dtype: type = np.float32,
    rois_dtype: type = np.float32,
) -> onnx.ModelProto:
    """A graph with one MultilevelRoIAlign node 'roi_align': inputs rois, p0.. ; output pooled."""
    rois = gs.Variable("rois", rois_dtype, list(rois_shape))
    features = [gs.Variable(f"p{i}", dtype, list(shape)) for i, shape in enumerate(feature_shapes)]
    pooled = gs.Variable("pooled", dtype)
    node = gs.Node(
        contracts.ROI_ALIGN, "roi_align", dict(attributes), [rois, *features], [pooled], domain=contracts.ONNX_DOMAIN
    )
    return gs.export_onnx(gs.Graph([node], [rois, *features], [pooled]))


def batched_nms_graph(
    attributes: Mapping[str, Any],
    boxes_shape: Sequence[int | str],
    scores_shape: Sequence[int | str],
    boxes_dtype: type = np.float32,
    outputs: Sequence[str] = ("num", "boxes_out", "scores_out", "classes", "indices"),
) -> onnx.ModelProto:
    """A graph with one BatchedNMS node 'nms': inputs boxes, scores; outputs named by `outputs`."""
    boxes = gs.Variable("boxes", boxes_dtype, list(boxes_shape))
    scores = gs.Variable("scores", np.float32, list(scores_shape))
    dtypes = {"num": np.int32, "boxes_out": np.float32, "scores_out": np.float32, "classes": np.int32}
    results = [gs.Variable(name, dtypes.get(name, np.int32)) for name in outputs]
    node = gs.Node(
        contracts.BATCHED_NMS, "nms", dict(attributes), [boxes, scores], results, domain=contracts.ONNX_DOMAIN
    )
    return gs.export_onnx(gs.Graph([node], [boxes, scores], results))
