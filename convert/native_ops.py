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
    mosaics: dict[tuple[int, ...], tuple[gs.Variable, list[int]]],
) -> gs.Variable:
    """rois [B,R,4] → [B,R,C,S,S]: torchvision's LevelMapper picks a level per RoI, RoiAlign pools from it.

    The levels' maps lie one below the other in one map (a mosaic, made once per set of maps: `mosaics`), each
    framed by a copy of its edge rows and columns, so that one RoiAlign pools every RoI from its own level with the
    RoI moved there: sampling at a map's edge reads the copy, which equals torchvision's clamping to the last row or
    column. Only a RoI that reaches more than a pixel past its map's edge (a sub-pixel RoI that roi_align widens to
    one pixel at the map's far edge) reads another level's frame where torchvision reads zero.
    """
    if attrs.aligned and opset < 16:
        raise BadInput(f"aligned RoIAlign needs opset 16 or later in a native-mode graph (the graph has {opset})")
    # The batch follows from the tensors (-1, the row count), so that one graph runs any batch.
    flat = emit("Reshape", rois, np.array([-1, 4], INT64))
    batch_index = emit("Div", row_numbers(emit, flat), np.int64(num_rois))
    sides = emit("Sub", columns(emit, flat, 2, 4), columns(emit, flat, 0, 2))
    area = emit("Mul", columns(emit, sides, 0, 1), columns(emit, sides, 1, 2))
    # LevelMapper: floor(lvl0 + log2(sqrt(area) / s0) + eps), clamped; ONNX has no Log2, so ln(x) / ln(2).
    log2 = emit("Div", emit("Log", emit("Div", emit("Sqrt", area), np.float32(attrs.canonical_scale))), np.float32(np.log(2)))
    level = emit("Floor", emit("Add", emit("Add", np.float32(attrs.canonical_level), log2), np.float32(attrs.eps)))
    level = emit("Clip", level, np.float32(attrs.min_level), np.float32(attrs.max_level))  # [N,1]
    # A RoI whose area is negative has a NaN level and matches none: zeros, as torchvision leaves it.
    has_level = emit("Equal", level, level)
    index = emit("Cast", emit("Sub", emit("Where", has_level, level, np.float32(attrs.min_level)), np.float32(attrs.min_level)), to=onnx.TensorProto.INT64)
    index = emit("Reshape", index, np.array([-1], INT64))
    key = tuple(id(feature) for feature in features)
    if key not in mosaics:
        mosaics[key] = _mosaic(emit, features)
    mosaic, tops = mosaics[key]
    scales = np.array([2.0 ** -(attrs.min_level + i) for i in range(len(features))], np.float32)
    scale = emit("Unsqueeze", emit("Gather", scales, index, axis=0), np.array([1], INT64))  # [N,1]
    top = emit("Unsqueeze", emit("Gather", np.array(tops, np.float32), index, axis=0), np.array([1], INT64))
    ones = emit("Expand", np.ones((1, 1), np.float32), emit("Shape", top))
    shift = emit("Concat", ones, top, ones, top, axis=1)
    moved = emit("Add", emit("Mul", flat, scale), shift)
    mode = {"coordinate_transformation_mode": "half_pixel" if attrs.aligned else "output_half_pixel"} if opset >= 16 else {}
    aligned = emit(
        "RoiAlign",
        mosaic,
        moved,
        batch_index,
        output_height=attrs.output_size,
        output_width=attrs.output_size,
        sampling_ratio=attrs.sampling_ratio,
        spatial_scale=1.0,
        mode="avg",
        **mode,
    )
    pooled = emit("Where", emit("Reshape", has_level, np.array([-1, 1, 1, 1], INT64)), aligned, np.zeros((), np.float32))
    size = attrs.output_size
    return emit("Reshape", pooled, np.array([-1, num_rois, int(features[0].shape[1]), size, size], INT64))


def _mosaic(emit: Emitter, features: list[gs.Tensor]) -> tuple[gs.Variable, list[int]]:
    """The maps [B,C,Hl,Wl] one below the other, each framed by a copy of its edge rows and columns and padded
    with zeros to the widest, and the row at which each map's row 0 lies (its column 0 lies at column 1)."""
    width = max(int(feature.shape[3]) for feature in features) + 2
    framed, tops, top = [], [], 0
    for feature in features:
        height, map_width = int(feature.shape[2]), int(feature.shape[3])
        rows = emit("Concat", _edge(emit, feature, 2, 0), feature, _edge(emit, feature, 2, height - 1), axis=2)
        frame = emit("Concat", _edge(emit, rows, 3, 0), rows, _edge(emit, rows, 3, map_width - 1), axis=3)
        if map_width + 2 < width:
            frame = emit("Pad", frame, np.array([0, 0, 0, 0, 0, 0, 0, width - map_width - 2], INT64), np.zeros((), np.float32))
        framed.append(frame)
        tops.append(top + 1)
        top += height + 2
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
