"""The middle of the deploy graph, rebuilt with static shapes between the parts reused from the export.

It follows torchvision's eval-mode RegionProposalNetwork and RoIHeads step by step (the comments name the
torchvision function each block stands for): proposals from the RPN head, RoI pooling for the box head, detection
post-processing, RoI pooling for the mask head, mask class selection. Variable-length lists become fixed-size tensors
whose invalid rows carry a score of -inf, so every shape is known when TensorRT builds the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from maskrt.contracts.plugins import (
    BATCHED_NMS,
    ONNX_DOMAIN,
    ROI_ALIGN,
    BatchedNMSAttrs,
    MultilevelRoIAlignAttrs,
    onnx_attributes,
)
from maskrt.contracts.records import REBUILT_PREFIX, DetectionSettings
from maskrt.convert import native_ops
from maskrt.convert.extent import ImageExtent
from maskrt.convert.graphs import INT64, Emitter, columns, gather_rows
from maskrt.convert.locate import ExportedParts, PoolSite

NEG_INF = np.float32(-np.inf)


@dataclass(frozen=True)
class Geometry:
    """The sizes the middle is built for: all static but the batch, which may be symbolic."""

    batch: int | str  # the export's batch, or records.BATCH_DIM in a dynamic-batch graph
    image_size: tuple[int, int]  # (H, W) of the letterboxed input; boxes are clipped to it
    level_sizes: list[tuple[int, int]]  # RPN feature map (Hl, Wl), in the RPN's level order
    anchors: list[np.ndarray]  # per RPN level [Hl*Wl*A, 4], torchvision's order
    num_classes: int
    mask_size: int
    opset: int
    extent: ImageExtent | None = None  # each image's extent (the image_sizes input); None clips to H x W


@dataclass(frozen=True)
class DeployOutputs:
    num_detections: gs.Variable  # [B,1] int32
    boxes: gs.Variable  # [B,K,4]
    scores: gs.Variable  # [B,K]
    classes: gs.Variable  # [B,K] int32
    masks: gs.Variable  # [B,K,M,M]


def rebuild_middle(
    graph: gs.Graph, parts: ExportedParts, geometry: Geometry, settings: DetectionSettings, plugins: str
) -> DeployOutputs:
    """Adds the rebuilt middle to `graph`, feeding the reused heads through their (cut) pooled-feature tensors."""
    emit = Emitter(graph, REBUILT_PREFIX)
    ops = _Ops(emit, geometry, plugins == "maskrt")

    proposals, num_proposals = _proposals(emit, ops, parts, geometry, settings)
    num_rois = proposals.shape[1]
    box_features = ops.roi_align(proposals, parts.box_pool.features, parts.box_pool.attrs)
    _feed_head(emit, box_features, parts.box_pool)

    # RoIHeads.postprocess_detections: softmax scores, per-class boxes decoded from the proposals and clipped. Every
    # shape leaves the batch to follow from the tensor (-1), so that one graph runs any batch.
    nc = geometry.num_classes
    scores = emit("Reshape", emit("Softmax", parts.class_logits, axis=-1), np.array([-1, num_rois, nc], INT64))
    regression = emit("Reshape", parts.box_regression, np.array([-1, num_rois, nc, 4], INT64))
    reference = emit("Reshape", proposals, np.array([-1, num_rois, 1, 4], INT64))
    boxes = _clip(emit, _decode(emit, regression, reference, settings.box_weights, settings.bbox_xform_clip), geometry, rank=4)
    # remove_small_boxes, and the padding rows of the proposals, drop out as -inf scores.
    real_proposal = _first_rows(emit, num_proposals, num_rois)  # [B,R]
    big_enough = emit("Reshape", _big_enough(emit, boxes, settings.box_min_size), np.array([-1, num_rois, nc], INT64))
    keep = emit("And", big_enough, emit("Reshape", real_proposal, np.array([-1, num_rois, 1], INT64)))
    scores = emit("Where", keep, scores, NEG_INF)
    detections = ops.batched_nms(
        boxes,
        scores,
        BatchedNMSAttrs(
            iou_threshold=settings.box_nms_thresh,
            score_threshold=settings.box_score_thresh,
            max_output=min(settings.detections_per_img, num_rois * (nc - 1)),
            background_class=0,
        ),
        num_candidates=num_rois,
        num_classes=nc,
        per_class_boxes=True,
    )
    num_detections, det_boxes, det_scores, det_classes = detections[:4]
    k = det_boxes.shape[1]

    # maskrcnn_inference: the mask of each detection's own class, as probabilities.
    mask_features = ops.roi_align(det_boxes, parts.mask_pool.features, parts.mask_pool.attrs)
    _feed_head(emit, mask_features, parts.mask_pool)
    m = geometry.mask_size
    # Each detection row [B*K] picks its class's map of the mask logits [B*K, C, M, M].
    own_class = emit("Cast", emit("Reshape", det_classes, np.array([-1, 1, 1, 1], INT64)), to=onnx.TensorProto.INT64)
    own_class = emit("Expand", own_class, np.array([1, 1, m, m], INT64))
    masks = emit("Sigmoid", emit("GatherElements", parts.mask_logits, own_class, axis=1))
    masks = emit("Reshape", masks, np.array([-1, k, m, m], INT64))
    real_detection = emit("Reshape", _first_rows(emit, num_detections, k), np.array([-1, k, 1, 1], INT64))
    masks = emit("Where", real_detection, masks, np.float32(0))
    return DeployOutputs(num_detections, det_boxes, det_scores, det_classes, masks)


def _proposals(
    emit: Emitter, ops: _Ops, parts: ExportedParts, geometry: Geometry, settings: DetectionSettings
) -> tuple[gs.Variable, gs.Variable]:
    """RegionProposalNetwork.forward + filter_proposals: [B, post_nms_top_n, 4] proposals and their count [B,1]."""
    logits, deltas, anchors, level_of = [], [], [], []
    for level, (objectness, rpn_deltas, level_anchors) in enumerate(zip(parts.objectness, parts.rpn_deltas, geometry.anchors)):
        height, width = geometry.level_sizes[level]
        per_location = level_anchors.shape[0] // (height * width)
        count = level_anchors.shape[0]
        # permute_and_flatten: (B, A, H, W) → (B, H*W*A), the order AnchorGenerator lays its anchors out in.
        flat_logits = emit("Reshape", emit("Transpose", objectness, perm=[0, 2, 3, 1]), np.array([-1, count], INT64))
        flat_deltas = emit("Reshape", rpn_deltas, np.array([-1, per_location, 4, height, width], INT64))
        flat_deltas = emit("Reshape", emit("Transpose", flat_deltas, perm=[0, 3, 4, 1, 2]), np.array([-1, count, 4], INT64))
        if geometry.extent is not None:
            # Anchors outside torchvision's padded extent do not exist there.
            inside = emit("Unsqueeze", geometry.extent.inside((height, width)), np.array([3], INT64))
            inside = emit("Reshape", emit("Expand", inside, np.array([1, height, width, per_location], INT64)), np.array([-1, count], INT64))
            flat_logits = emit("Where", inside, flat_logits, NEG_INF)
        # _get_top_n_idx: the pre_nms_top_n best logits of each level. Decoding only those equals torchvision's
        # decode-all-then-select, box for box.
        top = min(settings.rpn_pre_nms_top_n, count)
        top_logits, top_index = emit("TopK", flat_logits, np.array([top], INT64), axis=1, outputs=2)
        logits.append(top_logits)
        deltas.append(gather_rows(emit, flat_deltas, top_index, top))
        if geometry.extent is not None:
            anchors.append(geometry.extent.anchors(top_index, (height, width), level_anchors[:per_location]))
        else:
            anchors.append(emit("Gather", level_anchors.astype(np.float32), top_index, axis=0))
        level_of += [level] * top
    total = len(level_of)
    all_logits = emit("Concat", *logits, axis=1)
    probabilities = emit("Sigmoid", all_logits)
    boxes = _decode(emit, emit("Concat", *deltas, axis=1), emit("Concat", *anchors, axis=1), settings.rpn_box_weights, settings.bbox_xform_clip)
    boxes = _clip(emit, boxes, geometry, rank=3)
    # remove_small_boxes drops out as -inf; batched_nms keeps levels apart, so each level is a class with its
    # proposals' scores in its own column.
    keep = _big_enough(emit, boxes, settings.rpn_min_size)
    if geometry.extent is not None:
        keep = emit("And", keep, emit("Reshape", emit("Greater", all_logits, NEG_INF), np.array([-1, total, 1], INT64)))
    scores = emit("Where", keep, emit("Reshape", probabilities, np.array([-1, total, 1], INT64)), NEG_INF)
    own_level = np.asarray(level_of)[:, None] == np.arange(len(parts.objectness))[None, :]
    scores = emit("Where", own_level, scores, NEG_INF)
    # score >= rpn_score_thresh, as BatchedNMS's strict score > threshold on the next float below it.
    threshold = float(np.nextafter(np.float32(settings.rpn_score_thresh), NEG_INF)) if settings.rpn_score_thresh > 0 else -1.0
    num, proposals = ops.batched_nms(
        boxes,
        scores,
        BatchedNMSAttrs(
            iou_threshold=settings.rpn_nms_thresh,
            score_threshold=threshold,
            max_output=min(settings.rpn_post_nms_top_n, total),
        ),
        num_candidates=total,
        num_classes=len(parts.objectness),
        per_class_boxes=False,
    )[:2]
    return proposals, num


def _decode(emit: Emitter, deltas: gs.Tensor, reference: gs.Tensor, weights: tuple[float, ...], clip: float) -> gs.Variable:
    """BoxCoder.decode_single, operation for operation, so the float rounding matches torchvision's."""
    x1, y1, x2, y2 = (_coordinate(emit, reference, i) for i in range(4))
    widths, heights = emit("Sub", x2, x1), emit("Sub", y2, y1)
    ctr_x = emit("Add", x1, emit("Mul", np.float32(0.5), widths))
    ctr_y = emit("Add", y1, emit("Mul", np.float32(0.5), heights))
    dx, dy, dw, dh = (emit("Div", _coordinate(emit, deltas, i), np.float32(w)) for i, w in enumerate(weights))
    dw, dh = emit("Min", dw, np.float32(clip)), emit("Min", dh, np.float32(clip))
    pred_ctr_x = emit("Add", emit("Mul", dx, widths), ctr_x)
    pred_ctr_y = emit("Add", emit("Mul", dy, heights), ctr_y)
    half_w = emit("Mul", np.float32(0.5), emit("Mul", emit("Exp", dw), widths))
    half_h = emit("Mul", np.float32(0.5), emit("Mul", emit("Exp", dh), heights))
    return emit(
        "Concat",
        emit("Sub", pred_ctr_x, half_w),
        emit("Sub", pred_ctr_y, half_h),
        emit("Add", pred_ctr_x, half_w),
        emit("Add", pred_ctr_y, half_h),
        axis=-1,
    )


def _clip(emit: Emitter, boxes: gs.Variable, geometry: Geometry, rank: int) -> gs.Variable:
    """clip_boxes_to_image: x into [0, w], y into [0, h] of each image (image_sizes), or of the canvas H x W; boxes
    [B,...,4] of the given rank."""
    limits: gs.Tensor | np.ndarray
    if geometry.extent is not None:
        limits = geometry.extent.clip_limits(rank)
    else:
        height, width = geometry.image_size
        limits = np.array([width, height, width, height], np.float32)
    return emit("Min", emit("Max", boxes, np.float32(0)), limits)


def _big_enough(emit: Emitter, boxes: gs.Tensor, min_size: float) -> gs.Variable:
    """remove_small_boxes' test, keeping the trailing axis: [..., 1] bool."""
    wide = emit("GreaterOrEqual", emit("Sub", _coordinate(emit, boxes, 2), _coordinate(emit, boxes, 0)), np.float32(min_size))
    tall = emit("GreaterOrEqual", emit("Sub", _coordinate(emit, boxes, 3), _coordinate(emit, boxes, 1)), np.float32(min_size))
    return emit("And", wide, tall)


def _coordinate(emit: Emitter, boxes: gs.Tensor, index: int) -> gs.Variable:
    return columns(emit, boxes, index, index + 1)


def _first_rows(emit: Emitter, count: gs.Tensor, rows: int) -> gs.Variable:
    """[B, rows] bool: row < count[b], the rows BatchedNMS filled."""
    return emit("Less", np.arange(rows, dtype=np.int32)[None, :], count)


def _feed_head(emit: Emitter, pooled: gs.Variable, site: PoolSite) -> None:
    """[B,R,C,S,S] → [B*R,C,S,S] into the tensor the reused head reads."""
    _, _, channels, size, _ = pooled.shape  # as _Ops.roi_align set it
    emit("Reshape", pooled, np.array([-1, channels, size, size], INT64), into=site.pooled)


@dataclass(frozen=True)
class _Ops:
    """The two plugin ops, as plugin nodes or as their standard-ONNX equivalents."""

    emit: Emitter
    geometry: Geometry
    plugins: bool
    mosaics: dict[tuple[int, ...], tuple[gs.Variable, list[int]]] = field(default_factory=dict)  # native RoIAlign's maps

    def roi_align(self, rois: gs.Variable, features: list[gs.Variable], attrs: MultilevelRoIAlignAttrs) -> gs.Variable:
        batch, num_rois = self.geometry.batch, rois.shape[1]
        if self.plugins:
            pooled = self.emit(ROI_ALIGN, rois, *features, domain=ONNX_DOMAIN, **onnx_attributes(attrs))
        else:
            pooled = native_ops.multilevel_roi_align(
                self.emit, rois, features, attrs, num_rois, self.geometry.opset, self.geometry.image_size, self.mosaics
            )
        size = attrs.output_size
        pooled.dtype, pooled.shape = features[0].dtype, [batch, num_rois, features[0].shape[1], size, size]
        extent = self.geometry.extent
        map_sizes = [(int(feature.shape[2]), int(feature.shape[3])) for feature in features]
        if extent is not None and not attrs.aligned and native_ops.rois_on_maps(self.geometry.image_size, map_sizes, attrs):
            # torchvision's maps end at each image's padded extent, past which a RoI widened to one pixel reads zero.
            pooled = self.emit("Mul", pooled, extent.pooling_share(rois, map_sizes, attrs))
            pooled.dtype, pooled.shape = features[0].dtype, [batch, num_rois, features[0].shape[1], size, size]
        return pooled

    def batched_nms(
        self,
        boxes: gs.Variable,
        scores: gs.Variable,
        attrs: BatchedNMSAttrs,
        num_candidates: int,
        num_classes: int,
        per_class_boxes: bool,
    ) -> list[gs.Variable]:
        batch, k = self.geometry.batch, attrs.max_output
        if self.plugins:
            outputs = self.emit(BATCHED_NMS, boxes, scores, domain=ONNX_DOMAIN, outputs=5, **onnx_attributes(attrs))
        else:
            outputs = native_ops.batched_nms(self.emit, boxes, scores, attrs, num_candidates, num_classes, per_class_boxes)
        shapes = ([batch, 1], [batch, k, 4], [batch, k], [batch, k], [batch, k])
        dtypes = (np.int32, np.float32, np.float32, np.int32, np.int32)
        for tensor, shape, dtype in zip(outputs, shapes, dtypes):
            tensor.shape, tensor.dtype = list(shape), dtype
        return outputs
