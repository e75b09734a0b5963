"""The CPU reference of the plugins answers like torchvision's own ops (the oracle), on random and adversarial cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plugin_support import (
    FP16_RELATIVE,
    FP32_TOLERANCE,
    assert_same_detections,
    nms_cases,
    roi_align_cases,
    torchvision_batched_nms,
    torchvision_multilevel_roi_align,
)

from maskrt.plugins import reference
from maskrt.contracts.plugins import BatchedNMSAttrs, MultilevelRoIAlignAttrs


@settings(max_examples=60, deadline=None)
@given(roi_align_cases())
def test_roi_align_matches_torchvision(case: tuple[np.ndarray, list[np.ndarray], MultilevelRoIAlignAttrs]) -> None:
    rois, features, attrs = case
    pooled = reference.multilevel_roi_align(rois, features, attrs)
    assert pooled.dtype == np.float32
    expected = torchvision_multilevel_roi_align(rois, features, attrs)
    np.testing.assert_allclose(pooled, expected, rtol=0, atol=FP32_TOLERANCE)


@settings(max_examples=25, deadline=None)
@given(roi_align_cases())
def test_roi_align_fp16_rounds_the_float32_result(
    case: tuple[np.ndarray, list[np.ndarray], MultilevelRoIAlignAttrs],
) -> None:
    rois, features, attrs = case
    half = [level_map.astype(np.float16) for level_map in features]
    pooled = reference.multilevel_roi_align(rois, half, attrs)
    assert pooled.dtype == np.float16
    np.testing.assert_allclose(
        pooled.astype(np.float32),
        torchvision_multilevel_roi_align(rois, half, attrs),
        rtol=FP16_RELATIVE,
        atol=FP32_TOLERANCE,
    )


def _maps(levels: range, size: int = 16, batch: int = 1, channels: int = 2, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, channels, size, size), dtype=np.float32) for _ in levels]


ADVERSARIAL_ROIS = {
    "whole map and beyond": [[-1000, -1000, 5000, 5000], [0, 0, 64, 64], [-4, -4, 68, 68]],
    "edges": [[0, 0, 0, 0], [64, 64, 64, 64], [60, 60, 64, 64], [-8, -8, 0, 0], [-4, 0, 4, 64], [63.5, 0, 64.5, 1]],
    "outside": [[100, 100, 120, 130], [-50, -50, -20, -30], [1e4, 1e4, 1e4 + 10, 1e4 + 10]],
    "tiny and huge": [[10, 10, 10.25, 10.5], [3, 3, 3, 40], [0, 0, 2000, 1500], [5, 5, 5.001, 5.001]],
    "level boundaries": [[0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 448, 448], [0, 0, 56, 56], [0, 0, 111.9, 112]],
    "negative area": [[20, 20, 10, 30], [20, 20, 30, 10], [30, 30, 20, 20]],
}


@pytest.mark.parametrize("rois", ADVERSARIAL_ROIS.values(), ids=ADVERSARIAL_ROIS.keys())
@pytest.mark.parametrize("levels", [range(2, 6), range(2, 4), range(3, 4)], ids=["P2-P5", "P2-P3", "P3 only"])
@pytest.mark.parametrize("aligned", [0, 1])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_adversarial_rois(rois: list[list[float]], levels: range, aligned: int, sampling_ratio: int) -> None:
    attrs = MultilevelRoIAlignAttrs(
        output_size=7, sampling_ratio=sampling_ratio, aligned=aligned, min_level=levels.start, max_level=levels.stop - 1
    )
    boxes = np.array([rois], np.float32)
    features = _maps(levels)
    pooled = reference.multilevel_roi_align(boxes, features, attrs)
    expected = torchvision_multilevel_roi_align(boxes, features, attrs)
    np.testing.assert_allclose(pooled, expected, rtol=0, atol=FP32_TOLERANCE)


def test_roi_align_negative_area_stays_zero_across_levels() -> None:
    attrs = MultilevelRoIAlignAttrs(output_size=7, sampling_ratio=2, aligned=0)
    boxes = np.array([[[20, 20, 10, 30], [10, 10, 40, 40]]], np.float32)
    pooled = reference.multilevel_roi_align(boxes, _maps(range(2, 6)), attrs)
    assert not pooled[0, 0].any()
    assert pooled[0, 1].any()


def test_roi_align_batch_uses_each_images_maps() -> None:
    attrs = MultilevelRoIAlignAttrs(output_size=5, sampling_ratio=0, aligned=1, min_level=2, max_level=3)
    features = _maps(range(2, 4), batch=3, seed=1)
    boxes = np.tile(np.array([[[4, 8, 40, 36], [0, 0, 30, 10]]], np.float32), (3, 1, 1))
    pooled = reference.multilevel_roi_align(boxes, features, attrs)
    expected = torchvision_multilevel_roi_align(boxes, features, attrs)
    np.testing.assert_allclose(pooled, expected, rtol=0, atol=FP32_TOLERANCE)
    assert not np.allclose(pooled[0], pooled[1])


def test_roi_align_without_rois() -> None:
    attrs = MultilevelRoIAlignAttrs(output_size=7, sampling_ratio=2, aligned=0)
    pooled = reference.multilevel_roi_align(np.zeros((2, 0, 4), np.float32), _maps(range(2, 6), batch=2), attrs)
    assert pooled.shape == (2, 0, 2, 7, 7)


@settings(max_examples=80, deadline=None)
@given(nms_cases())
def test_nms_matches_torchvision(case: tuple[np.ndarray, np.ndarray, BatchedNMSAttrs]) -> None:
    boxes, scores, attrs = case
    output = reference.batched_nms(boxes, scores, attrs)
    assert_same_detections(output, torchvision_batched_nms(boxes, scores, attrs), boxes, scores)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(1, 3), st.sampled_from([0.0, 0.5]))
def test_nms_score_ties_keep_the_same_set(seed: int, num_slots: int, num_classes: int, iou_threshold: float) -> None:
    # Boxes drawn from a few slots that are identical or disjoint, with scores from three values: whichever of two
    # tied identical boxes survives, the set of kept (box, score, class) rows is the same.
    rng = np.random.default_rng(seed)
    slots = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(num_slots)], np.float32)
    boxes = slots[rng.integers(0, num_slots, (2, 10))]
    scores = rng.choice(np.array([0.25, 0.5, 0.75], np.float32), (2, 10, num_classes))
    attrs = BatchedNMSAttrs(iou_threshold=iou_threshold, score_threshold=0.0, max_output=10 * num_classes)
    output = reference.batched_nms(boxes, scores, attrs)
    assert_same_detections(output, torchvision_batched_nms(boxes, scores, attrs), boxes, scores, ties=True)


def test_nms_without_candidates_is_all_zero() -> None:
    scores = np.full((2, 6, 3), 0.5, np.float32)  # equal to the threshold: not a candidate
    boxes = np.tile(np.array([0, 0, 10, 10], np.float32), (2, 6, 1))
    output = reference.batched_nms(boxes, scores, BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.5, max_output=4))
    assert output.num.tolist() == [[0], [0]]
    assert not any(array.any() for array in output)
    assert [array.shape for array in output] == [(2, 1), (2, 4, 4), (2, 4), (2, 4), (2, 4)]


def test_nms_without_boxes() -> None:
    output = reference.batched_nms(
        np.zeros((1, 0, 4), np.float32), np.zeros((1, 0, 2), np.float32), BatchedNMSAttrs(0.5, 0.0, 3)
    )
    assert output.num.tolist() == [[0]]


def test_nms_all_suppressed_but_the_best() -> None:
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 10.5], [0.5, 0, 10, 10], [0, 0, 10, 10]]], np.float32)
    scores = np.array([[[0.6], [0.9], [0.7], [0.8]]], np.float32)
    attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.0, max_output=3)
    output = reference.batched_nms(boxes, scores, attrs)
    assert output.num.tolist() == [[1]] and output.indices[0].tolist() == [1, 0, 0]
    assert_same_detections(output, torchvision_batched_nms(boxes, scores, attrs), boxes, scores)


def test_nms_iou_equal_to_the_threshold_does_not_suppress() -> None:
    boxes = np.array([[[0, 0, 3, 1], [1, 0, 4, 1]]], np.float32)  # intersection 2, union 4: IoU exactly 0.5
    scores = np.array([[[0.9], [0.8]]], np.float32)
    for iou_threshold, kept in ((0.5, 2), (0.49, 1)):
        attrs = BatchedNMSAttrs(iou_threshold=iou_threshold, score_threshold=0.0, max_output=2)
        output = reference.batched_nms(boxes, scores, attrs)
        assert output.num[0, 0] == kept
        assert_same_detections(output, torchvision_batched_nms(boxes, scores, attrs), boxes, scores)


def test_nms_empty_boxes_suppress_nothing() -> None:
    boxes = np.array([[[5, 5, 5, 5], [5, 5, 5, 5], [5, 5, 5, 9]]], np.float32)  # IoU 0/0 is NaN, never > threshold
    scores = np.array([[[0.9], [0.8], [0.7]]], np.float32)
    attrs = BatchedNMSAttrs(iou_threshold=0.0, score_threshold=0.0, max_output=5)
    output = reference.batched_nms(boxes, scores, attrs)
    assert output.num[0, 0] == 3
    assert_same_detections(output, torchvision_batched_nms(boxes, scores, attrs), boxes, scores)


def test_nms_ties_put_the_lower_candidate_first() -> None:
    # 40 disjoint boxes in 2 classes scoring 0.25 or 0.5: within a score, the output follows n*C + c.
    boxes = np.array([[[20 * n, 0, 20 * n + 10, 10] for n in range(40)]], np.float32)
    scores = np.random.default_rng(0).choice(np.array([0.25, 0.5], np.float32), (1, 40, 2))
    output = reference.batched_nms(boxes, scores, BatchedNMSAttrs(0.5, 0.0, 80))
    expected = sorted(range(80), key=lambda candidate: (-scores.reshape(-1)[candidate], candidate))
    assert output.indices[0].tolist() == [candidate // 2 for candidate in expected]
    assert output.classes[0].tolist() == [candidate % 2 for candidate in expected]
    # The same boxes made identical: of each class's best-scoring ones, the lowest n survives.
    boxes[:] = [0, 0, 10, 10]
    output = reference.batched_nms(boxes, scores, BatchedNMSAttrs(0.5, 0.0, 80))
    assert output.indices[0, :2].tolist() == [np.flatnonzero(scores[0, :, c] == 0.5)[0] for c in (0, 1)]


def test_nms_boxes_outside_the_image() -> None:
    rng = np.random.default_rng(3)
    corner = rng.integers(-400, 400, (2, 30, 2)) / 2
    boxes = np.concatenate([corner, corner + rng.integers(-10, 200, (2, 30, 2)) / 2], axis=-1).astype(np.float32)
    scores = rng.permutation(2 * 30 * 2).reshape(2, 30, 2).astype(np.float32) / 120
    # Class-agnostic: torchvision's class offsets would not keep classes apart with negative coordinates.
    attrs = BatchedNMSAttrs(iou_threshold=0.3, score_threshold=0.1, max_output=25, class_agnostic=1)
    output = reference.batched_nms(boxes, scores, attrs)
    assert_same_detections(output, torchvision_batched_nms(boxes, scores, attrs), boxes, scores)


def test_nms_class_agnostic_suppresses_across_classes() -> None:
    boxes = np.array([[[0, 0, 10, 10], [1, 0, 10, 10]]], np.float32)
    scores = np.array([[[0.9, 0.0], [0.0, 0.8]]], np.float32)
    for agnostic, kept in ((0, 2), (1, 1)):
        output = reference.batched_nms(boxes, scores, BatchedNMSAttrs(0.5, 0.1, 4, class_agnostic=agnostic))
        assert output.num[0, 0] == kept


@pytest.mark.parametrize(
    ("num_boxes", "num_classes", "per_class", "attrs"),
    [
        # The final detections: per-class boxes, background 0, K = 100.
        (300, 91, True, BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.05, max_output=100, background_class=0)),
        # The RPN: FPN levels as classes, boxes shared by all of them.
        (1000, 5, False, BatchedNMSAttrs(iou_threshold=0.7, score_threshold=0.0, max_output=300)),
    ],
    ids=["detections", "rpn"],
)
def test_nms_mask_rcnn_sized(num_boxes: int, num_classes: int, per_class: bool, attrs: BatchedNMSAttrs) -> None:
    rng = np.random.default_rng(7)
    shape = (2, num_boxes, num_classes) if per_class else (2, num_boxes)
    corner = rng.integers(0, 800 * 4, (*shape, 2)) / 4
    boxes = np.concatenate([corner, corner + rng.integers(4, 400 * 4, (*shape, 2)) / 4], axis=-1).astype(np.float32)
    scores = (rng.permutation(2 * num_boxes * num_classes) / (2 * num_boxes * num_classes)).astype(np.float32)
    scores = scores.reshape(2, num_boxes, num_classes) ** 4  # most below the score threshold, as in a real model
    output = reference.batched_nms(boxes, scores, attrs)
    assert_same_detections(output, torchvision_batched_nms(boxes, scores, attrs), boxes, scores)
    assert (output.num > 0).all()
