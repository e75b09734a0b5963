"""CPU reference of maskrt's two plugins: the oracle for the CUDA kernels and the body of the ONNX Runtime custom ops.

NumPy rather than torch: the ONNX Runtime custom ops receive and return NumPy arrays, and a CPU run of a deploy graph
should not pay for importing torch. Both functions follow torchvision's CPU kernels step by step in float32 where a
rounding decides something (which level, which pixel, which box survives), so that they agree with torchvision
exactly there; elsewhere they reorder the arithmetic (RoIAlign as two matrix products), which moves only the last
bits of a value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from maskrt.contracts.plugins import BatchedNMSAttrs, MultilevelRoIAlignAttrs

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
        for level in np.unique(levels[image][levels[image] >= 0]):
            members = np.flatnonzero(levels[image] == level)
            # Channels last, so that a RoI's window is a view whose rows are contiguous; FP16 accumulates in float32.
            level_map = np.ascontiguousarray(features[level][image].transpose(1, 2, 0), dtype=F32)
            spatial_scale = 2.0 ** -(attrs.min_level + level)
            pooled[image, members] = _roi_align(level_map, rois[image, members], spatial_scale, attrs)
    return pooled.astype(features[0].dtype)


def _roi_levels(rois: np.ndarray, attrs: MultilevelRoIAlignAttrs) -> np.ndarray:
    """Index into the feature maps for each RoI [B,R]; -1 for a RoI that no level pools (it stays zero)."""
    if attrs.num_levels == 1:
        # torchvision skips the LevelMapper when there is a single map: every RoI is pooled from it, even one whose
        # negative area would have given it no level.
        return np.zeros(rois.shape[:2], np.int64)
    x1, y1, x2, y2 = np.moveaxis(rois, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # FPN paper, eqn. 1, in float32 as torchvision's LevelMapper; a negative area gives NaN, zero area -inf.
        scale = np.sqrt((x2 - x1) * (y2 - y1))
        level = np.floor(F32(attrs.canonical_level) + np.log2(scale / F32(attrs.canonical_scale)) + F32(attrs.eps))
    level = np.clip(level, attrs.min_level, attrs.max_level)
    # A NaN level matches no map, so torchvision leaves that RoI's output zero.
    return np.where(np.isnan(level), -1, level - attrs.min_level).astype(np.int64)


def _roi_align(
    feature: np.ndarray, rois: np.ndarray, spatial_scale: float, attrs: MultilevelRoIAlignAttrs
) -> np.ndarray:
    """torchvision roi_align of RoIs [N,4] on one image's float32 map [H,W,C] → [N,C,S,S].

    Bilinear interpolation is separable and so is the sampling grid, so the average of the samples of bin (i, j) is
    rows[i] · feature · cols[j]: `rows` [N,S,H] holds each output row's averaged interpolation weights over the
    feature rows, `cols` [N,S,W] the same over the columns. Only the window the weights touch is multiplied: RoIs of
    similar window sizes go together, their windows gathered to the largest of them (the extra weights are zero),
    as two batched matrix products.
    """
    height, width, channels = feature.shape
    size = attrs.output_size
    # Pixel centres move by -0.5 in aligned mode; computed in float32 as torchvision does.
    x1, y1, x2, y2 = (rois * F32(spatial_scale) - F32(0.5 if attrs.aligned else 0.0)).T
    rows, row_start, row_count = _axis_weights(y1, y2, height, attrs)
    cols, col_start, col_count = _axis_weights(x1, x2, width, attrs)
    pooled = np.zeros((len(rois), channels, size, size), F32)
    live = np.flatnonzero((row_count > 0) & (col_count > 0))
    for chunk in _chunks(live, row_count[live], col_count[live], channels):
        window_rows, row_weights = _window(rows[chunk], row_start[chunk], row_count[chunk])
        window_cols, col_weights = _window(cols[chunk], col_start[chunk], col_count[chunk])
        windows = feature[window_rows[:, :, None], window_cols[:, None, :]]  # [n, h, w, C]
        count, h, w = windows.shape[:3]
        pooled_rows = np.matmul(row_weights, windows.reshape(count, h, w * channels)).reshape(count, size, w, channels)
        pooled[chunk] = np.matmul(col_weights[:, None], pooled_rows).transpose(0, 3, 1, 2)  # [n, C, S (rows), S (cols)]
    return pooled


# Feature values one group of RoIs gathers at most (16 MB of float32), unless a single RoI needs more.
_CHUNK_VALUES = 1 << 22


def _chunks(rois: np.ndarray, heights: np.ndarray, widths: np.ndarray, channels: int) -> list[np.ndarray]:
    """Groups of RoIs whose windows are within a factor sqrt(2) of each other in height and in width, so that
    padding them to the group's largest wastes little, each group cut to at most _CHUNK_VALUES gathered values."""
    classes = np.ceil(2 * np.log2(heights)).astype(np.int64) * 64 + np.ceil(2 * np.log2(widths)).astype(np.int64)
    order = np.argsort(classes, kind="stable")
    chunks = []
    for group in np.split(order, np.flatnonzero(np.diff(classes[order])) + 1):
        if not len(group):
            continue
        per_chunk = max(1, _CHUNK_VALUES // (int(heights[group].max()) * int(widths[group].max()) * channels))
        chunks += [rois[group[i : i + per_chunk]] for i in range(0, len(group), per_chunk)]
    return chunks


def _window(weights: np.ndarray, start: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For RoIs' weights [n,S,size] and windows (start, count): the feature indices [n,k] of windows padded to the
    largest k, and the weights at those indices [n,S,k], zero past each RoI's own window."""
    k = int(count.max())
    offsets = np.arange(k)
    index = np.minimum(start[:, None] + offsets, weights.shape[2] - 1)
    gathered = np.take_along_axis(weights, index[:, None, :], axis=2)
    return index, np.where((offsets < count[:, None])[:, None, :], gathered, F32(0.0))


def _axis_weights(
    start: np.ndarray, end: np.ndarray, size: int, attrs: MultilevelRoIAlignAttrs
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interpolation weights [N, S, size] of one axis for N RoIs, averaged over each output bin's samples along that
    axis, as float32; and each RoI's window, the contiguous range of indices with a non-zero weight: its first index
    and its length (0: none)."""
    bins, count = attrs.output_size, len(start)
    length = end - start
    if not attrs.aligned:
        length = np.maximum(length, F32(1.0))  # torchvision forces malformed RoIs to 1x1 in legacy mode
    bin_size = length / F32(bins)
    finite = np.isfinite(bin_size)  # NaN/inf coordinates: every sample falls off the map
    # Adaptive sampling takes ceil(bin size) samples per bin, up to 2^30 as the kernel takes them (past 46341 per axis
    # torchvision's int count of samples overflows); a negative RoI in aligned mode gets none.
    if attrs.sampling_ratio > 0:
        grid = np.full(count, attrs.sampling_ratio, np.int64)
    else:
        grid = np.where(finite, np.ceil(np.minimum(np.where(finite, bin_size, 0), F32(2**30))), 0).astype(np.int64)
    grid = np.where(finite, np.maximum(grid, 0), 0)
    bin_index = np.arange(bins, dtype=F32)[None, :, None]
    per_bin = np.maximum(grid, 1).astype(F32)[:, None, None]
    size_of_bin = bin_size[:, None, None]

    def position(sample: np.ndarray) -> np.ndarray:
        # Same float32 operations in the same order as torchvision, so a sample on a pixel edge lands where it does
        # there: start + bin * bin_size + (sample + 0.5) * bin_size / grid.
        with np.errstate(invalid="ignore", over="ignore"):
            offset = (sample.astype(F32) + F32(0.5)) * size_of_bin / per_bin
            placed: np.ndarray = start[:, None, None] + bin_index * size_of_bin + offset
        return placed

    # Each bin's samples from `first`: all of them, or, for a grid larger than the map (a RoI far larger than any image,
    # as the kernel meets on uninitialised inputs), only the run that can land on the map, found as the kernel finds
    # it; the others add nothing, so the weights are the same either way.
    first = np.zeros((count, bins, 1), np.int64)
    taken = np.broadcast_to(grid[:, None, None], (count, bins, 1))
    windowed = (grid > size + 2) & (bin_size > 0)
    if windowed.any():
        first, taken = _visible_samples(position, np.where(windowed, grid, 0), size, bins)
        taken = np.where(windowed[:, None, None], taken, grid[:, None, None])
    most = max(int(taken.max(initial=0)), 1)
    sample_index = first + np.arange(most)[None, None, :]
    coords = position(sample_index)
    # Samples past a bin's own run count for nothing; so do those more than one pixel off the map (written so that
    # NaN fails the test too).
    sampled = np.arange(most)[None, None, :] < taken
    inside = sampled & (coords >= -1.0) & (coords <= size)
    coords = np.where(inside, np.maximum(coords, F32(0.0)), F32(0.0))
    low = coords.astype(np.int64)
    on_last_pixel = low >= size - 1
    low = np.where(on_last_pixel, size - 1, low)
    high = np.where(on_last_pixel, size - 1, low + 1)
    coords = np.where(on_last_pixel, low.astype(F32), coords)
    high_weight = coords - low.astype(F32)
    low_weight = F32(1.0) - high_weight
    # Accumulated in float64 and averaged, then float32 for the products with the map.
    row = (np.arange(count)[:, None, None] * bins + np.arange(bins)[None, :, None]) * size
    weights = np.bincount(
        np.concatenate([(row + low).ravel(), (row + high).ravel()]),
        np.concatenate([np.where(inside, low_weight, 0.0).ravel(), np.where(inside, high_weight, 0.0).ravel()]),
        minlength=count * bins * size,
    ).reshape(count, bins, size)
    weights = (weights / np.maximum(grid, 1)[:, None, None]).astype(F32)
    touched = (weights != 0).any(axis=1)  # [N, size]
    first = np.argmax(touched, axis=1)
    last = size - np.argmax(touched[:, ::-1], axis=1)
    return weights, first, np.where(touched.any(axis=1), last - first, 0)


def _visible_samples(
    position: Callable[[np.ndarray], np.ndarray], grid: np.ndarray, size: int, bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each RoI and bin [N,S,1]: the first sample at or past -1 and how many follow up to the last at or before
    `size`, by bisection over the sample index (positions grow with it for a positive bin): the kernel's
    visible_samples, vectorised. A RoI with a grid of 0 here gets (0, 0)."""
    limit = np.broadcast_to(grid[:, None, None], (len(grid), bins, 1))

    def first_where(beyond: Callable[[np.ndarray], np.ndarray], low: np.ndarray) -> np.ndarray:
        high = limit.copy()
        while (low < high).any():
            middle = low + (high - low) // 2
            with np.errstate(invalid="ignore"):
                past = beyond(position(middle)) & (low < high)
            high = np.where(past, middle, high)
            low = np.where(~past & (low < high), middle + 1, low)
        return low

    first = first_where(lambda where: where >= -1.0, np.zeros_like(limit))
    last = first_where(lambda where: where > size, first)
    return first, last - first


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
    The IoUs of _NMS_BLOCK boxes with every later box are computed at once, as the greedy pass reaches them.
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[order].T
    areas = (x2 - x1) * (y2 - y1)
    # The plugin's fields are float32, so the threshold is compared as one (as an ONNX attribute it is one already).
    threshold = F32(iou_threshold)
    suppressed = np.zeros(len(order), bool)
    keep: list[int] = []
    for block in range(0, len(order), _NMS_BLOCK):
        rows = slice(block, min(block + _NMS_BLOCK, len(order)))
        # IoU in float32 as torchvision computes it; 0/0 (two empty boxes) is NaN, which suppresses nothing.
        width = np.maximum(F32(0.0), np.minimum(x2[rows, None], x2[None, block:]) - np.maximum(x1[rows, None], x1[None, block:]))
        height = np.maximum(F32(0.0), np.minimum(y2[rows, None], y2[None, block:]) - np.maximum(y1[rows, None], y1[None, block:]))
        inter = width * height
        with np.errstate(invalid="ignore", divide="ignore"):
            overlaps = inter / (areas[rows, None] + areas[None, block:] - inter) > threshold  # [block, later]
        for i in range(rows.start, rows.stop):
            if suppressed[i]:
                continue
            keep.append(i)
            if len(keep) == limit:
                return order[keep]
            suppressed[i + 1 :] |= overlaps[i - block, i + 1 - block :]
    return order[keep]


_NMS_BLOCK = 256  # boxes whose IoUs with all later boxes are computed together: [256, N] at a time
