"""Finds, in a torchvision Mask R-CNN export, the parts that surgery keeps and the settings the graph itself shows.

Parts are found by what survives across torch and torchvision versions: the state_dict names of the layers that end
each kept part (rpn.head.cls_logits, roi_heads.box_predictor.cls_score, roi_heads.mask_predictor.mask_fcn_logits, ...)
and the graph's structure around them (the first convolution, the RoiAlign nodes that feed each head), never an op's
position. The backbone+FPN, the RPN head and the box and mask heads are reused as exported; everything between them
is rebuilt by surgery.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs

from maskrt.convert.graphs import all_nodes, ancestors, constant_value, consumer_map, descendants, node_inputs, scalar_constant
from maskrt.plugins.contracts import MultilevelRoIAlignAttrs

OBJECTNESS_WEIGHT = "rpn.head.cls_logits.weight"
RPN_DELTAS_WEIGHT = "rpn.head.bbox_pred.weight"
CLASS_LOGITS_WEIGHT = "roi_heads.box_predictor.cls_score.weight"
BOX_REGRESSION_WEIGHT = "roi_heads.box_predictor.bbox_pred.weight"
MASK_LOGITS_WEIGHT = "roi_heads.mask_predictor.mask_fcn_logits.weight"


@dataclass
class PoolSite:
    """Where a head reads its MultiScaleRoIAlign features, and how they were pooled."""

    pooled: gs.Variable  # [R, C, S, S], the head's input
    features: list[gs.Variable]  # the FPN maps pooled from, finest first
    attrs: MultilevelRoIAlignAttrs
    rois: gs.Tensor  # the old RoI input, whose region of the graph is rebuilt


@dataclass
class ExportedParts:
    image_inputs: list[gs.Variable]
    backbone_input: gs.Variable  # the batched, normalised, padded images the first convolution reads
    objectness: list[gs.Variable]  # per RPN level [B, A, Hl, Wl], in the graph's order
    rpn_deltas: list[gs.Variable]  # per RPN level [B, 4A, Hl, Wl], paired with objectness
    box_pool: PoolSite
    mask_pool: PoolSite
    class_logits: gs.Variable  # [R, num_classes]
    box_regression: gs.Variable  # [R, 4 * num_classes]
    mask_logits: gs.Variable  # [R, num_classes, M, M]
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None  # (mean, std) read from the graph
    base_anchors: list[tuple[list[gs.Tensor], np.ndarray]] = field(default_factory=list)  # (shape sources, [A, 4])
    graph_settings: dict[str, float] = field(default_factory=dict)  # thresholds and top-n values found as constants


def locate_parts(graph: gs.Graph, path: Path) -> ExportedParts:
    """The kept parts of the export at `path`; ValueError naming what a Mask R-CNN export should have and lacks."""
    objectness = _layer_outputs(graph, OBJECTNESS_WEIGHT, path, "RPN objectness convolution")
    rpn_deltas = _layer_outputs(graph, RPN_DELTAS_WEIGHT, path, "RPN box-delta convolution")
    [class_logits] = _layer_outputs(graph, CLASS_LOGITS_WEIGHT, path, "box classifier", single=True)
    [box_regression] = _layer_outputs(graph, BOX_REGRESSION_WEIGHT, path, "box regressor", single=True)
    [mask_logits] = _layer_outputs(graph, MASK_LOGITS_WEIGHT, path, "mask predictor", single=True)
    rpn_deltas = _pair_by_input(objectness, rpn_deltas, path)

    roi_aligns = [n for n in graph.nodes if n.op == "RoiAlign"]
    before_boxes, before_masks = ancestors([class_logits]), ancestors([mask_logits])
    box_aligns = [n for n in roi_aligns if id(n) in before_boxes]
    mask_aligns = [n for n in roi_aligns if id(n) in before_masks and id(n) not in before_boxes]
    opset = int(graph.opset)
    box_pool = _pool_site(graph, box_aligns, class_logits, opset, path, "box head")
    mask_pool = _pool_site(graph, mask_aligns, mask_logits, opset, path, "mask head")

    image_inputs = [t for t in graph.inputs if t.dtype == np.float32 and t.shape is not None and len(t.shape) in (3, 4)]
    if not image_inputs:
        raise ValueError(f"{path}: no float32 image input ([3,H,W] or [B,3,H,W]) found")
    parts = ExportedParts(
        image_inputs=image_inputs,
        backbone_input=_backbone_input(graph, objectness, path),
        objectness=objectness,
        rpn_deltas=rpn_deltas,
        box_pool=box_pool,
        mask_pool=mask_pool,
        class_logits=class_logits,
        box_regression=box_regression,
        mask_logits=mask_logits,
        normalisation=_normalisation(image_inputs[0]),
        base_anchors=_base_anchors(graph, objectness),
    )
    parts.graph_settings = _graph_settings(graph, parts)
    return parts


def _layer_outputs(graph: gs.Graph, weight: str, path: Path, what: str, single: bool = False) -> list[gs.Variable]:
    """Outputs of the layers (Conv, Gemm, MatMul + bias) that use the state_dict weight named `weight`."""
    outputs = []
    for node in graph.nodes:
        if node.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or not any(_is_named(t, weight) for t in node.inputs):
            continue
        out = node.outputs[0]
        if node.op == "MatMul" and len(out.outputs) == 1 and out.outputs[0].op == "Add":
            out = out.outputs[0].outputs[0]  # Linear exported as MatMul then Add(bias)
        outputs.append(out)
    if not outputs:
        raise ValueError(
            f"{path}: not a torchvision Mask R-CNN export: no {what} found (a layer with the weight '{weight}')"
        )
    if single and len(outputs) != 1:
        raise ValueError(f"{path}: expected one {what} (weight '{weight}'), found {len(outputs)}")
    return outputs


def _is_named(tensor: gs.Tensor, name: str) -> bool:
    while tensor.name != name and len(tensor.inputs) == 1 and tensor.inputs[0].op == "Identity":
        tensor = tensor.inputs[0].inputs[0]
    return tensor.name == name


def _pair_by_input(objectness: list[gs.Variable], deltas: list[gs.Variable], path: Path) -> list[gs.Variable]:
    """Orders the RPN box deltas like objectness: the two convolutions of a level read the same tensor."""
    by_input = {id(d.inputs[0].inputs[0]): d for d in deltas}
    paired = [by_input.get(id(o.inputs[0].inputs[0])) for o in objectness]
    if any(p is None for p in paired) or len(deltas) != len(objectness):
        raise ValueError(f"{path}: the RPN head's objectness and box-delta outputs do not pair up level by level")
    return paired  # type: ignore[return-value]


def _backbone_input(graph: gs.Graph, objectness: list[gs.Variable], path: Path) -> gs.Variable:
    """The tensor the first convolution reads: torchvision's normalised, resized, padded image batch."""
    backbone = ancestors(objectness)
    convs = [n for n in graph.nodes if n.op == "Conv" and id(n) in backbone]
    # A first convolution's data input has no convolution upstream: its producer is neither one nor downstream of one.
    after_conv = descendants(consumer_map(graph), [t for n in convs for t in n.outputs]) | {id(n) for n in convs}
    firsts = [n for n in convs if not any(id(p) in after_conv for p in n.inputs[0].inputs)]
    inputs = {id(n.inputs[0]): n.inputs[0] for n in firsts}
    if len(inputs) != 1:
        raise ValueError(f"{path}: expected the backbone to start with convolutions of one image batch, found {len(inputs)}")
    return next(iter(inputs.values()))


def _normalisation(image: gs.Variable) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """torchvision's (image - mean) / std, as the first two nodes on the image input."""
    for sub in image.outputs:
        mean = constant_value(sub.inputs[1]) if sub.op == "Sub" and len(sub.inputs) == 2 else None
        divs = [n for n in sub.outputs[0].outputs if n.op == "Div"] if mean is not None else []
        std = constant_value(divs[0].inputs[1]) if divs else None
        if mean is not None and std is not None and mean.size == 3 and std.size == 3:
            return tuple(float(v) for v in mean.ravel()), tuple(float(v) for v in std.ravel())
    return None


def _pool_site(
    graph: gs.Graph, aligns: list[gs.Node], head_output: gs.Variable, opset: int, path: Path, head: str
) -> PoolSite:
    if not aligns:
        raise ValueError(f"{path}: no RoiAlign nodes feed the {head}: not a torchvision Mask R-CNN export")
    first = aligns[0].attrs
    if any(a.attrs.get("mode", "avg") != "avg" for a in aligns):
        raise ValueError(f"{path}: the {head}'s RoiAlign uses max pooling; torchvision's MultiScaleRoIAlign averages")
    if len({(a.attrs.get("output_height"), a.attrs.get("output_width"), a.attrs.get("sampling_ratio")) for a in aligns}) > 1:
        raise ValueError(f"{path}: the {head}'s RoiAlign nodes differ in output size or sampling ratio")
    if first.get("output_height", 1) != first.get("output_width", 1):
        raise ValueError(f"{path}: the {head} pools to a non-square size, which MultilevelRoIAlign does not support")
    # Opset 16 added coordinate_transformation_mode with half_pixel (aligned=True) as its default; before it,
    # RoiAlign had no half-pixel offset.
    mode = first.get("coordinate_transformation_mode", "half_pixel" if opset >= 16 else "output_half_pixel")
    by_level: dict[int, gs.Node] = {}
    for align in aligns:
        scale = float(align.attrs.get("spatial_scale", 1.0))
        level = round(-math.log2(scale))
        if not math.isclose(scale, 2.0**-level, rel_tol=1e-6):
            raise ValueError(f"{path}: the {head}'s RoiAlign scale {scale} is not a power of two")
        # Two maps of one stride (MobileNetV3's FPN): LevelMapper's range collapses and only the first is read.
        by_level.setdefault(level, align)
    levels = sorted(by_level)
    if levels != list(range(levels[0], levels[-1] + 1)):
        raise ValueError(f"{path}: the {head} pools from FPN levels {levels}, which are not contiguous")
    attrs = MultilevelRoIAlignAttrs(
        output_size=int(first.get("output_height", 1)),
        sampling_ratio=int(first.get("sampling_ratio", 0)),
        aligned=int(mode == "half_pixel"),
        min_level=levels[0],
        max_level=levels[-1],
    )
    return PoolSite(
        pooled=_merge_point(graph, aligns, head_output),
        features=[by_level[level].inputs[0] for level in levels],
        attrs=attrs,
        rois=aligns[0].inputs[1],
    )


def _merge_point(graph: gs.Graph, aligns: list[gs.Node], head_output: gs.Variable) -> gs.Variable:
    """The first tensor that holds every level's pooled RoIs: MultiScaleRoIAlign's result, the head's input."""
    if len(aligns) == 1:
        return aligns[0].outputs[0]
    common = ancestors([head_output])
    consumers = consumer_map(graph)
    for align in aligns:
        common &= descendants(consumers, align.outputs)
    first = next(n for n in graph.nodes if id(n) in common)
    return first.outputs[0]


def _base_anchors(graph: gs.Graph, objectness: list[gs.Variable]) -> list[tuple[list[gs.Tensor], np.ndarray]]:
    """Per-level cell anchors [A, 4], as AnchorGenerator adds them to its grid of shifts, with the tensors whose
    shapes gave that grid (the level's feature map, and the image batch for the stride), so surgery can match them
    to RPN levels once shapes are known."""
    anchors_per_location = objectness[0].inputs[0].inputs[1].shape[0]
    found = []
    for node in graph.nodes:
        if node.op != "Add":
            continue
        for i, tensor in enumerate(node.inputs):
            value = constant_value(tensor)
            if value is None or value.dtype != np.float32 or value.shape != (1, anchors_per_location, 4):
                continue
            found.append((_shape_sources(node.inputs[1 - i]), value.reshape(-1, 4)))
    return found


def _shape_sources(tensor: gs.Tensor) -> list[gs.Tensor]:
    """The tensors whose Shape a computation starts from."""
    stack, seen, sources = [tensor], set(), {}
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for node in current.inputs:
            if node.op == "Shape":
                sources[id(node.inputs[0])] = node.inputs[0]
            else:
                stack.extend(node_inputs(node))
    return list(sources.values())


def _graph_settings(graph: gs.Graph, parts: ExportedParts) -> dict[str, float]:
    """Thresholds and top-n values as torchvision's traced code leaves them in the graph.

    RPN: TopK per level (k = min(pre_nms_top_n, anchors)), score >= score_thresh, box sides >= min_size,
    batched_nms(iou), keep[:post_nms_top_n]. Box head: score > score_thresh, sides >= min_size, batched_nms(iou),
    keep[:detections_per_img]. Each value is read from the constant the comparison, NMS or slice uses.
    """
    consumers = consumer_map(graph)
    rpn = descendants(consumers, parts.objectness) & ancestors([parts.box_pool.rois])
    boxes = descendants(consumers, [parts.class_logits]) & ancestors([parts.mask_pool.rois])
    found: dict[str, float] = {}
    for region, prefix in ((rpn, "rpn"), (boxes, "box")):
        nodes = [n for n in graph.nodes if id(n) in region]
        for node in nodes:
            nms = _nms_nodes(node)
            if nms:
                _store(found, f"{prefix}_nms_thresh", scalar_constant(nms[0].inputs[3]) if len(nms[0].inputs) > 3 else None)
                top_n = "rpn_post_nms_top_n" if prefix == "rpn" else "detections_per_img"
                for consumer in node.outputs[0].outputs:
                    if consumer.op == "Slice" and scalar_constant(consumer.inputs[1]) == 0:
                        _store(found, top_n, scalar_constant(consumer.inputs[2]))
            elif node.op == "TopK" and prefix == "rpn":
                _store(found, "rpn_pre_nms_top_n", _topk_limit(node.inputs[1]))
            elif node.op in ("Greater", "GreaterOrEqual"):
                value = scalar_constant(node.inputs[1])
                if value is None:
                    continue
                if _derives_from_sigmoid_or_softmax(node.inputs[0]):
                    _store(found, f"{prefix}_score_thresh", value)
                else:
                    _store(found, f"{prefix}_min_size", value)
    return found


def _nms_nodes(node: gs.Node) -> list[gs.Node]:
    """The NonMaxSuppression a node is, or holds in its If branches (torchvision guards NMS of no boxes)."""
    if node.op == "NonMaxSuppression":
        return [node]
    bodies = [g for g in node.attrs.values() if isinstance(g, gs.Graph)]
    return [n for body in bodies for n in all_nodes(body) if n.op == "NonMaxSuppression"]


def _store(found: dict[str, float], key: str, value: float | None) -> None:
    if value is not None:
        found[key] = max(found.get(key, value), value) if key == "rpn_pre_nms_top_n" else value


def _topk_limit(k: gs.Tensor) -> float | None:
    """torchvision's traced _topk_min: k = ReduceMin(Concat(pre_nms_top_n, anchors in the level))."""
    stack, seen = [k], set()
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen or len(seen) > 32:
            continue
        seen.add(id(tensor))
        value = constant_value(tensor)
        if value is not None and value.size == 1 and np.issubdtype(value.dtype, np.integer) and value.item() > 1:
            return float(value.item())
        stack.extend(t for n in tensor.inputs if n.op != "Shape" for t in n.inputs)
    return None


def _derives_from_sigmoid_or_softmax(tensor: gs.Tensor, depth: int = 6) -> bool:
    if depth == 0 or not tensor.inputs:
        return False
    node = tensor.inputs[0]
    if node.op in ("Sigmoid", "Softmax"):
        return True
    if node.op in ("Sub", "Shape"):  # box sides are differences of coordinates
        return False
    return any(_derives_from_sigmoid_or_softmax(t, depth - 1) for t in node.inputs if not isinstance(t, gs.Constant))
