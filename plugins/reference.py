"""CPU reference of maskrt's two plugins: the oracle for the CUDA kernels and the body of the ONNX Runtime custom ops.

NumPy rather than torch: the ONNX Runtime custom ops receive and return NumPy arrays, and a CPU run of a deploy graph
should not pay for importing torch. Both functions follow torchvision's CPU kernels step by step in float32 where a
rounding decides something (which level, which pixel, which box survives), so that they agree with torchvision
exactly there; elsewhere they reorder the arithmetic (RoIAlign as two matrix products), which moves only the last
bits of a value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from maskrt.plugins.contracts import BatchedNMSAttrs, MultilevelRoIAlignAttrs

F32 = np.float32


def multilevel_roi_align(
    rois: np.ndarray, features: Sequence[np.ndarray], attrs: MultilevelRoIAlignAttrs
) -> np.ndarray:
    """torchvision MultiScaleRoIAlign: rois [B,R,4] (input pixels), one [B,C,Hl,Wl] map per level → [B,R,C,S,S].

    The output has the features' dtype; FP16 features are pooled in float32 and rounded once at the end.
    """
    rois = np.asarray(rois, dtype=F32)
    batch, num_rois = rois.shape[:2]
    size = attrs.output_size
    pooled = np.zeros((batch, num_rois, features[0].shape[1], size, size), F32)
    levels = _roi_levels(rois, attrs)
    for image in range(batch):
        # Channels last, so that a RoI's window is a view whose rows are contiguous; FP16 accumulates in float32.
        maps = [np.ascontiguousarray(level_map[image].transpose(1, 2, 0), dtype=F32) for level_map in features]
        for roi in np.flatnonzero(levels[image] >= 0):
            level = levels[image, roi]
            spatial_scale = 2.0 ** -(attrs.min_level + level)
            pooled[image, roi] = _roi_align(maps[level], rois[image, roi], spatial_scale, attrs)
    return pooled.astype(features[0].dtype)


def _roi_levels(rois: np.ndarray, attrs: MultilevelRoIAlignAttrs) -> np.ndarray:
    """Index into the feature maps for each RoI [B,R]; -1 for a RoI that no level pools (it stays zero)."""
    if attrs.num_levels == 1:
        # torchvision skips the LevelMapper when there is a single map: every RoI is pooled from it, even one whose
        # negative area would have given it no level.
        return np.zeros(rois.shape[:2], np.int64)
    x1, y1, x2, y2 = np.moveaxis(rois, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # FPN paper, eqn. 1, in float32 as torchvision's LevelMapper; a negative area gives NaN, zero area -inf.
        scale = np.sqrt((x2 - x1) * (y2 - y1))
        level = np.floor(F32(attrs.canonical_level) + np.log2(scale / F32(attrs.canonical_scale)) + F32(attrs.eps))
    level = np.clip(level, attrs.min_level, attrs.max_level)
    # A NaN level matches no map, so torchvision leaves that RoI's output zero.
    return np.where(np.isnan(level), -1, level - attrs.min_level).astype(np.int64)


def _roi_align(
    feature: np.ndarray, roi: np.ndarray, spatial_scale: float, attrs: MultilevelRoIAlignAttrs
) -> np.ndarray:
    """torchvision roi_align of one RoI [4] on one image's float32 map [H,W,C] → [C,S,S].

    Bilinear interpolation is separable and so is the sampling grid, so the average of the samples of bin (i, j) is
    rows[i] · feature · cols[j]: `rows` [S,H] holds each output row's averaged interpolation weights over the
    feature rows, `cols` [S,W] the same over the columns. Only the window the weights touch is multiplied.
    """
    height, width, channels = feature.shape
    # Pixel centres move by -0.5 in aligned mode; computed in float32 as torchvision does.
    x1, y1, x2, y2 = roi * F32(spatial_scale) - F32(0.5 if attrs.aligned else 0.0)
    rows = _axis_weights(y1, y2, height, attrs)
    cols = _axis_weights(x1, x2, width, attrs)
    row_window, col_window = _support(rows), _support(cols)
    if row_window is None or col_window is None:
        return np.zeros((channels, attrs.output_size, attrs.output_size), F32)
    window = feature[row_window, col_window]  # [h, w, C], a view
    pooled_rows = np.tensordot(rows[:, row_window].astype(F32), window, axes=([1], [0]))  # [S, w, C]
    pooled = np.tensordot(cols[:, col_window].astype(F32), pooled_rows, axes=([1], [1]))  # [S (columns), S (rows), C]
    return pooled.transpose(2, 1, 0)


def _axis_weights(start: np.float32, end: np.float32, size: int, attrs: MultilevelRoIAlignAttrs) -> np.ndarray:
    """Interpolation weights [S, size] of one axis, averaged over each output bin's samples along that axis."""
    bins = attrs.output_size
    length = end - start
    if not attrs.aligned:
        length = max(length, F32(1.0))  # torchvision forces malformed RoIs to 1x1 in legacy mode
    bin_size = length / F32(bins)
    weights = np.zeros((bins, size))
    if not np.isfinite(bin_size):
        return weights  # NaN/inf coordinates: every sample falls off the map
    # Adaptive sampling takes ceil(bin size) samples per bin; a negative RoI in aligned mode gets none.
    grid = attrs.sampling_ratio if attrs.sampling_ratio > 0 else int(np.ceil(bin_size))
    if grid <= 0:
        return weights
    bin_index = np.arange(bins, dtype=F32)[:, None]
    sample_index = np.arange(grid, dtype=F32)[None, :]
    # Same float32 operations in the same order as torchvision, so a sample on a pixel edge lands where it does there.
    coords = start + bin_index * bin_size + (sample_index + F32(0.5)) * bin_size / F32(grid)  # [S, grid]
    # Samples more than one pixel off the map contribute zero (written so that NaN fails the test too).
    inside = (coords >= -1.0) & (coords <= size)
    coords = np.where(inside, np.maximum(coords, F32(0.0)), F32(0.0))
    low = coords.astype(np.int64)
    on_last_pixel = low >= size - 1
    low = np.where(on_last_pixel, size - 1, low)
    high = np.where(on_last_pixel, size - 1, low + 1)
    coords = np.where(on_last_pixel, low.astype(F32), coords)
    high_weight = coords - low.astype(F32)
    low_weight = F32(1.0) - high_weight
    bin_of_sample = np.broadcast_to(np.arange(bins)[:, None], coords.shape)
    np.add.at(weights, (bin_of_sample, low), np.where(inside, low_weight, 0.0))
    np.add.at(weights, (bin_of_sample, high), np.where(inside, high_weight, 0.0))
    return weights / grid


def _support(weights: np.ndarray) -> slice | None:
    """The contiguous range of feature indices with a non-zero weight, or None when there is none."""
    touched = np.flatnonzero(weights.any(axis=0))
    return slice(touched[0], touched[-1] + 1) if touched.size else None


class NMSOutput(NamedTuple):
    """BatchedNMS's outputs in the plugin's order; rows past `num` are zero."""

    num: np.ndarray  # [B,1] int32
    boxes: np.ndarray  # [B,K,4] float32
    scores: np.ndarray  # [B,K] float32
    classes: np.ndarray  # [B,K] int32
    indices: np.ndarray  # [B,K] int32, the row n in N


def batched_nms(boxes: np.ndarray, scores: np.ndarray, attrs: BatchedNMSAttrs) -> NMSOutput:
    """torchvision batched_nms per image, then its first K: boxes [B,N,4] or [B,N,C,4], scores [B,N,C]."""
    boxes = np.asarray(boxes, dtype=F32)
    scores = np.asarray(scores, dtype=F32)
    batch, num_boxes, num_classes = scores.shape
    top = attrs.max_output
    output = NMSOutput(
        num=np.zeros((batch, 1), np.int32),
        boxes=np.zeros((batch, top, 4), F32),
        scores=np.zeros((batch, top), F32),
        classes=np.zeros((batch, top), np.int32),
        indices=np.zeros((batch, top), np.int32),
    )
    for image in range(batch):
        # Candidates are numbered n*C + c, the order of the flattened [N,C] scores, which also breaks score ties.
        candidate = scores[image] > F32(attrs.score_threshold)
        if 0 <= attrs.background_class < num_classes:
            candidate[:, attrs.background_class] = False
        flat = np.flatnonzero(candidate)
        rows, classes = np.divmod(flat, num_classes)
        candidate_boxes = boxes[image][rows] if boxes.ndim == 3 else boxes[image][rows, classes]
        candidate_scores = scores[image].reshape(-1)[flat]
        kept = _kept_candidates(candidate_boxes, candidate_scores, classes, attrs)
        count = len(kept)
        output.num[image, 0] = count
        output.boxes[image, :count] = candidate_boxes[kept]
        output.scores[image, :count] = candidate_scores[kept]
        output.classes[image, :count] = classes[kept]
        output.indices[image, :count] = rows[kept]
    return output


def _kept_candidates(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, attrs: BatchedNMSAttrs) -> np.ndarray:
    """The first K survivors of per-class NMS over all classes, as indices into the candidates, best first."""
    groups = np.zeros_like(classes) if attrs.class_agnostic else classes
    survivor = np.zeros(len(scores), bool)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        survivor[members[_nms(boxes[members], scores[members], attrs.iou_threshold, attrs.max_output)]] = True
    kept = np.flatnonzero(survivor)
    # Descending score; a stable sort keeps tied candidates in ascending n*C + c.
    return kept[np.argsort(-scores[kept], kind="stable")][: attrs.max_output]


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """torchvision nms on one class: indices of the kept boxes [M,4], best first, at most `limit` of them.

    Greedy: the best remaining box is kept and suppresses every later box whose IoU with it is > iou_threshold.
    Only the K best survivors of all classes are output, so a class never needs more than K: the loop stops there.
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[order].T
    areas = (x2 - x1) * (y2 - y1)
    # The plugin's fields are float32, so the threshold is compared as one (as an ONNX attribute it is one already).
    threshold = F32(iou_threshold)
    suppressed = np.zeros(len(order), bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) == limit:
            break
        later = slice(i + 1, None)
        # IoU in float32 as torchvision computes it; 0/0 (two empty boxes) is NaN, which suppresses nothing.
        width = np.maximum(F32(0.0), np.minimum(x2[i], x2[later]) - np.maximum(x1[i], x1[later]))
        height = np.maximum(F32(0.0), np.minimum(y2[i], y2[later]) - np.maximum(y1[i], y1[later]))
        inter = width * height
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (areas[i] + areas[later] - inter)
        suppressed[later] |= iou > threshold
    return order[keep]
