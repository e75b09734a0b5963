"""The two plugin contracts (contracts/plugins.py) written with standard ONNX ops, for `--plugins native` graphs that
runtimes without maskrt's Python plugins can build (trtexec, DeepStream, Triton's TensorRT backend).

Both produce exactly the plugin's outputs, so the rest of the deploy graph does not know which mode it is in.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from maskrt.contracts.errors import BadInput
from maskrt.contracts.plugins import BatchedNMSAttrs, MultilevelRoIAlignAttrs
from maskrt.convert.graphs import INT64, Emitter, columns, gather_rows, row_numbers


def multilevel_roi_align(
    emit: Emitter,
    rois: gs.Tensor,
    features: list[gs.Tensor],
    attrs: MultilevelRoIAlignAttrs,
    num_rois: int,
    opset: int,
    image_size: tuple[int, int],
    mosaics: dict[tuple[int, ...], tuple[gs.Variable, list[int]]],
) -> gs.Variable:
    """rois [B,R,4] inside the image (H, W) = `image_size` → [B,R,C,S,S]: torchvision's LevelMapper picks a level per
    RoI, RoiAlign pools from it.

    Where every RoI lies on its level's map (rois_on_maps), the maps lie one below the other in one map (a mosaic,
    made once per set of maps: `mosaics`), each framed by copies of its edge rows and columns, so that one RoiAlign
    pools every RoI from its own level with the RoI moved there: sampling at a map's edge reads the copy, which equals
    torchvision's clamping to the last row or column. Past the far edge torchvision reads zero instead, which no
    interpolated map can give (the value jumps there): inside_share scales those bins down to the samples that
    torchvision keeps. Elsewhere each level's RoiAlign pools every RoI on its own map, and a Where keeps each RoI's
    own level.
    """
    if attrs.aligned and opset < 16:
        raise BadInput(f"aligned RoIAlign needs opset 16 or later in a native-mode graph (the graph has {opset})")
    # The batch follows from the tensors (-1, the row count), so that one graph runs any batch.
    flat = emit("Reshape", rois, np.array([-1, 4], INT64))
    index, has_level = roi_levels(emit, flat, attrs)
    batch_index = emit("Div", row_numbers(emit, flat), np.int64(num_rois))
    map_sizes = [(int(feature.shape[2]), int(feature.shape[3])) for feature in features]
    if rois_on_maps(image_size, map_sizes, attrs):
        pooled = _pooled_from_mosaic(emit, flat, batch_index, index, features, attrs, opset, mosaics)
    else:
        pooled = _pooled_level_by_level(emit, flat, batch_index, index, features, attrs, opset)
    pooled = emit("Where", emit("Reshape", has_level, np.array([-1, 1, 1, 1], INT64)), pooled, np.zeros((), np.float32))
    size = attrs.output_size
    return emit("Reshape", pooled, np.array([-1, num_rois, int(features[0].shape[1]), size, size], INT64))


def roi_levels(emit: Emitter, rois: gs.Tensor, attrs: MultilevelRoIAlignAttrs) -> tuple[gs.Variable, gs.Variable]:
    """torchvision's LevelMapper for rois [N,4]: each RoI's map, [N] int64 from 0, and whether it has one, [N,1]."""
    sides = emit("Sub", columns(emit, rois, 2, 4), columns(emit, rois, 0, 2))
    area = emit("Mul", columns(emit, sides, 0, 1), columns(emit, sides, 1, 2))
    # floor(lvl0 + log2(sqrt(area) / s0) + eps), clamped; ONNX has no Log2, so ln(x) / ln(2).
    log2 = emit("Div", emit("Log", emit("Div", emit("Sqrt", area), np.float32(attrs.canonical_scale))), np.float32(np.log(2)))
    level = emit("Floor", emit("Add", emit("Add", np.float32(attrs.canonical_level), log2), np.float32(attrs.eps)))
    level = emit("Clip", level, np.float32(attrs.min_level), np.float32(attrs.max_level))  # [N,1]
    # A RoI whose area is negative has a NaN level and matches none: zeros, as torchvision leaves it.
    has_level = emit("Equal", level, level)
    index = emit("Cast", emit("Sub", emit("Where", has_level, level, np.float32(attrs.min_level)), np.float32(attrs.min_level)), to=onnx.TensorProto.INT64)
    return emit("Reshape", index, np.array([-1], INT64)), has_level


def level_scales(attrs: MultilevelRoIAlignAttrs) -> np.ndarray:
    """[L] float32: each map's spatial scale, 2^-level."""
    return np.array([2.0 ** -(attrs.min_level + i) for i in range(attrs.num_levels)], np.float32)


def rois_on_maps(image_size: tuple[int, int], map_sizes: list[tuple[int, int]], attrs: MultilevelRoIAlignAttrs) -> bool:
    """Whether every RoI inside the image (H, W) lies on its level's (Hl, Wl) map at its level's scale.

    Not always: torchvision takes a level's scale from the image's size, not the padded batch's, so where padding adds
    more than half an octave to the image (a 66-pixel image padded to 96), a level's scale is finer than its map's
    stride and the RoIs reach past the map."""
    return all(
        side * scale <= map_side
        for map_size, scale in zip(map_sizes, level_scales(attrs))
        for side, map_side in zip(image_size, map_size)
    )


def inside_share(emit: Emitter, rois: gs.Tensor, sides: gs.Tensor, attrs: MultilevelRoIAlignAttrs) -> gs.Variable:
    """[N,1,S,S]: the share of each output bin's samples that torchvision's roi_align (legacy mode) keeps, those at
    or before the far edges `sides` [N,2] (w, h) of each RoI's map; rois [N,4] are on the map.

    Only a RoI shorter than a pixel, widened to one, samples past an edge, and then it starts in the map's last pixel:
    every sample it has reads the last row or column (torchvision clamps there), so where a map reads that row or
    column past the edge too, torchvision's average is that map's times this share."""
    size = attrs.output_size
    share_x = _axis_share(emit, columns(emit, rois, 0, 1), columns(emit, rois, 2, 3), columns(emit, sides, 0, 1), attrs)
    share_y = _axis_share(emit, columns(emit, rois, 1, 2), columns(emit, rois, 3, 4), columns(emit, sides, 1, 2), attrs)
    return emit("Mul", emit("Reshape", share_y, np.array([-1, 1, size, 1], INT64)), emit("Reshape", share_x, np.array([-1, 1, 1, size], INT64)))


def _pooled_from_mosaic(
    emit: Emitter, rois: gs.Tensor, batch_index: gs.Tensor, index: gs.Tensor, features: list[gs.Tensor],
    attrs: MultilevelRoIAlignAttrs, opset: int, mosaics: dict[tuple[int, ...], tuple[gs.Variable, list[int]]],
) -> gs.Variable:
    """[N,C,S,S]: one RoiAlign over the mosaic of the maps, each RoI [N,4] moved to its level's map (index [N])."""
    key = tuple(id(feature) for feature in features)
    if key not in mosaics:
        mosaics[key] = _mosaic(emit, features)
    mosaic, tops = mosaics[key]
    scale = emit("Unsqueeze", emit("Gather", level_scales(attrs), index, axis=0), np.array([1], INT64))  # [N,1]
    top = emit("Unsqueeze", emit("Gather", np.array(tops, np.float32), index, axis=0), np.array([1], INT64))
    ones = emit("Expand", np.ones((1, 1), np.float32), emit("Shape", top))
    shift = emit("Concat", ones, top, ones, top, axis=1)
    on_map = emit("Mul", rois, scale)
    pooled = _roi_align(emit, mosaic, emit("Add", on_map, shift), batch_index, 1.0, attrs, opset)
    if attrs.aligned:  # only roi_align's legacy mode, which widens a RoI under a pixel, samples past a map's edge
        return pooled
    map_sizes = np.array([[int(f.shape[3]), int(f.shape[2])] for f in features], np.float32)  # (w, h) per level
    return emit("Mul", pooled, inside_share(emit, on_map, emit("Gather", map_sizes, index, axis=0), attrs))


def _pooled_level_by_level(
    emit: Emitter, rois: gs.Tensor, batch_index: gs.Tensor, index: gs.Tensor, features: list[gs.Tensor],
    attrs: MultilevelRoIAlignAttrs, opset: int,
) -> gs.Variable:
    """[N,C,S,S]: every level's RoiAlign on all RoIs [N,4], on its own map, whose edge ONNX's RoiAlign treats as
    torchvision does; each RoI's own level (index [N]) kept."""
    pooled: gs.Tensor | np.ndarray = np.zeros((), np.float32)
    own_level = emit("Reshape", index, np.array([-1, 1, 1, 1], INT64))
    for level, (feature, scale) in enumerate(zip(features, level_scales(attrs))):
        aligned = _roi_align(emit, feature, rois, batch_index, float(scale), attrs, opset)
        pooled = emit("Where", emit("Equal", own_level, np.int64(level)), aligned, pooled)
    return pooled  # type: ignore[return-value]


def _roi_align(
    emit: Emitter,
    feature: gs.Tensor,
    rois: gs.Tensor,
    batch_index: gs.Tensor,
    spatial_scale: float,
    attrs: MultilevelRoIAlignAttrs,
    opset: int,
) -> gs.Variable:
    """ONNX RoiAlign as torchvision's roi_align, with the plugin's attributes."""
    # Before opset 16 RoiAlign had no coordinate_transformation_mode, and no half-pixel offset.
    mode = {"coordinate_transformation_mode": "half_pixel" if attrs.aligned else "output_half_pixel"} if opset >= 16 else {}
    return emit(
        "RoiAlign",
        feature,
        rois,
        batch_index,
        output_height=attrs.output_size,
        output_width=attrs.output_size,
        sampling_ratio=attrs.sampling_ratio,
        spatial_scale=spatial_scale,
        mode="avg",
        **mode,
    )


def _axis_share(
    emit: Emitter, start: gs.Tensor, end: gs.Tensor, side: gs.Tensor, attrs: MultilevelRoIAlignAttrs
) -> gs.Variable:
    """[N,S]: inside_share along one axis, from the RoIs' `start` and `end` and the map's `side`, [N,1] each.

    The positions are computed in float32 as torchvision computes them, start + bin * bin_size + (sample + 0.5) *
    bin_size / samples, so that a sample on the edge falls on the same side of it. Adaptive sampling takes one sample
    per bin from a RoI widened to one pixel; every other RoI keeps all its samples, a share of 1.
    """
    samples = attrs.sampling_ratio or 1
    bin_size = emit("Div", emit("Max", emit("Sub", end, start), np.float32(1)), np.float32(attrs.output_size))
    bin_size = emit("Unsqueeze", bin_size, np.array([2], INT64))  # [N,1,1]
    bins = np.arange(attrs.output_size, dtype=np.float32).reshape(1, -1, 1)
    offsets = (np.arange(samples, dtype=np.float32) + np.float32(0.5)).reshape(1, 1, -1)
    first = emit("Add", emit("Unsqueeze", start, np.array([2], INT64)), emit("Mul", bins, bin_size))
    positions = emit("Add", first, emit("Div", emit("Mul", offsets, bin_size), np.float32(samples)))  # [N,S,samples]
    kept = emit("Cast", emit("LessOrEqual", positions, emit("Unsqueeze", side, np.array([2], INT64))), to=onnx.TensorProto.FLOAT)
    return emit("Div", emit("ReduceSum", kept, np.array([2], INT64), keepdims=0), np.float32(samples))


def _mosaic(emit: Emitter, features: list[gs.Tensor]) -> tuple[gs.Variable, list[int]]:
    """The maps [B,C,Hl,Wl] one below the other, each framed by a copy of its first row and column and two of its
    last (a RoI widened to one pixel samples up to a pixel past the far edge), padded with zeros to the widest, and
    the row at which each map's row 0 lies (its column 0 lies at column 1)."""
    width = max(int(feature.shape[3]) for feature in features) + 3
    framed, tops, top = [], [], 0
    for feature in features:
        height, map_width = int(feature.shape[2]), int(feature.shape[3])
        last_row = _edge(emit, feature, 2, height - 1)
        rows = emit("Concat", _edge(emit, feature, 2, 0), feature, last_row, last_row, axis=2)
        last_column = _edge(emit, rows, 3, map_width - 1)
        frame = emit("Concat", _edge(emit, rows, 3, 0), rows, last_column, last_column, axis=3)
        if map_width + 3 < width:
            frame = emit("Pad", frame, np.array([0, 0, 0, 0, 0, 0, 0, width - map_width - 3], INT64), np.zeros((), np.float32))
        framed.append(frame)
        tops.append(top + 1)
        top += height + 3
    return emit("Concat", *framed, axis=2), tops


def _edge(emit: Emitter, tensor: gs.Tensor, axis: int, index: int) -> gs.Variable:
    """tensor's row (axis 2) or column (axis 3) `index`, keeping the axis."""
    return emit("Slice", tensor, np.array([index], INT64), np.array([index + 1], INT64), np.array([axis], INT64))


def batched_nms(
    emit: Emitter,
    boxes: gs.Tensor,
    scores: gs.Tensor,
    attrs: BatchedNMSAttrs,
    num_candidates: int,
    num_classes: int,
    per_class_boxes: bool,
) -> list[gs.Variable]:
    """boxes [B,N,4] or [B,N,C,4], scores [B,N,C] → num [B,1], boxes [B,K,4], scores [B,K], classes [B,K], indices [B,K].

    ONNX NonMaxSuppression keeps each (image, class) apart already; with per-class boxes every (image, class) pair
    becomes one of its batches. Its output has a data-dependent length, so the kept scores are scattered straight
    back into a static [B, N*C] table (index n*C + c, the contract's tie order) and TopK takes the best K.
    """
    if attrs.class_agnostic:
        raise BadInput("class-agnostic BatchedNMS has no native-mode form; use --plugins maskrt")
    n, c, k = num_candidates, num_classes, attrs.max_output
    by_class = emit("Transpose", scores, perm=[0, 2, 1])  # [B, C, N], NonMaxSuppression's layout
    if attrs.background_class >= 0:
        background = np.zeros((1, c, 1), bool)
        background[0, attrs.background_class] = True
        by_class = emit("Where", background, np.float32(-np.inf), by_class)
    if per_class_boxes:
        nms_boxes = emit("Reshape", emit("Transpose", boxes, perm=[0, 2, 1, 3]), np.array([-1, n, 4], INT64))
        by_class = emit("Reshape", by_class, np.array([-1, 1, n], INT64))
    else:
        nms_boxes = boxes
    selected = emit(
        "NonMaxSuppression",
        nms_boxes,
        by_class,
        np.array([k], INT64),
        np.array([attrs.iou_threshold], np.float32),
        np.array([attrs.score_threshold], np.float32),
    )
    sel_batch, sel_class, sel_box = (emit("Gather", selected, np.array(i, INT64), axis=1) for i in range(3))
    if per_class_boxes:
        sel_class = emit("Mod", sel_batch, np.array(c, INT64))
        sel_batch = emit("Div", sel_batch, np.array(c, INT64))
    flat = emit("Add", emit("Mul", emit("Add", emit("Mul", sel_batch, np.array(n, INT64)), sel_box), np.array(c, INT64)), sel_class)
    flat_scores = emit("Reshape", scores, np.array([-1], INT64))
    kept = emit("Gather", flat_scores, flat, axis=0)
    table = emit("ConstantOfShape", emit("Shape", flat_scores), value=gs.Constant("neg_inf", np.array([-np.inf], np.float32)))
    table = emit("ScatterElements", table, flat, kept, axis=0)
    top_scores, top_index = emit("TopK", emit("Reshape", table, np.array([-1, n * c], INT64)), np.array([k], INT64), axis=1, outputs=2)
    valid = emit("Greater", top_scores, np.float32(attrs.score_threshold))
    count = emit("ReduceSum", emit("Cast", valid, to=onnx.TensorProto.FLOAT), np.array([1], INT64), keepdims=1)
    num = emit("Cast", count, to=onnx.TensorProto.INT32)
    classes = emit("Cast", emit("Mod", top_index, np.array(c, INT64)), to=onnx.TensorProto.INT32)
    rows = emit("Div", top_index, np.array(c, INT64))
    source = emit("Reshape", boxes, np.array([-1, n * c, 4], INT64)) if per_class_boxes else boxes
    picked = top_index if per_class_boxes else rows
    gathered = gather_rows(emit, source, picked, k)
    valid_rows = emit("Reshape", valid, np.array([-1, k, 1], INT64))
    return [
        num,
        emit("Where", valid_rows, gathered, np.float32(0)),
        emit("Where", valid, top_scores, np.float32(0)),
        emit("Where", valid, classes, np.int32(0)),
        emit("Where", valid, emit("Cast", rows, to=onnx.TensorProto.INT32), np.int32(0)),
    ]
