"""Finds, in a torchvision Mask R-CNN export, the parts that surgery keeps and the settings the graph itself shows.

Parts are found by what survives across torch and torchvision versions: the state_dict names of the layers that end
each kept part (rpn.head.cls_logits, roi_heads.box_predictor.cls_score, roi_heads.mask_predictor.mask_fcn_logits, ...)
and the graph's structure around them, never an op's position or a tensor's shape where the structure decides: an RPN
level's anchors are those whose grid is the Shape of the map its head reads, a RoiAlign's level is the `levels == k`
that selects its RoIs. What the structure cannot pair for certain (two levels of one grid, two maps of one stride) is
refused with the tensors named. The backbone+FPN, the RPN head and the box and mask heads are reused as exported;
everything between them is rebuilt by surgery.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime

from maskrt.contracts.errors import BadInput
from maskrt.contracts.layers import BOX_REGRESSION, CLASS_LOGITS, MASK_LOGITS, OBJECTNESS, RPN_DELTAS, LayerFinder
from maskrt.contracts.plugins import MultilevelRoIAlignAttrs
from maskrt.convert.graphs import (
    all_nodes,
    ancestors,
    constant_value,
    consumer_map,
    descendants,
    node_inputs,
    scalar_constant,
)


@dataclass
class PoolSite:
    """Where a head reads its MultiScaleRoIAlign features, and how they were pooled."""

    pooled: gs.Variable  # [R, C, S, S], the head's input
    features: list[gs.Variable]  # the FPN maps that LevelMapper's levels min_level..max_level read
    attrs: MultilevelRoIAlignAttrs
    rois: gs.Tensor  # the old RoI input, whose region of the graph is rebuilt
    mapper_source: str  # where canonical scale, level and eps came from: "graph", "torchvision default", or
    # "not used" (one map: torchvision pools without LevelMapper)


@dataclass
class ExportedParts:
    image_inputs: list[gs.Variable]
    backbone_input: gs.Variable  # the batched, normalised, padded images the first convolution reads
    objectness: list[gs.Variable]  # per RPN level [B, A, Hl, Wl], in the RPN's level order (as it concatenates them)
    rpn_deltas: list[gs.Variable]  # per RPN level [B, 4A, Hl, Wl], paired with objectness
    box_pool: PoolSite
    mask_pool: PoolSite
    class_logits: gs.Variable  # [R, num_classes]
    box_regression: gs.Variable  # [R, 4 * num_classes]
    mask_logits: gs.Variable  # [R, num_classes, M, M]
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None  # (mean, std) read from the graph
    cell_anchors: list[np.ndarray | None] = field(default_factory=list)  # per RPN level [A, 4]; None: not in the graph
    graph_settings: dict[str, float | tuple[float, ...]] = field(default_factory=dict)  # settings found as constants


@dataclass(frozen=True)
class Preprocessing:
    """What the export's own GeneralizedRCNNTransform does to an input of the deploy graph's size."""

    resized: tuple[int, int]  # (h, w) the image is resized to before batching
    padded: tuple[int, int]  # (h, w) of the batch the backbone reads: resized, rounded up to size_divisible


def locate_parts(graph: gs.Graph, model: onnx.ModelProto, path: Path) -> ExportedParts:
    """The kept parts of the export at `path` (`graph` imported from `model`); BadInput naming what a Mask R-CNN
    export should have and lacks, or what it cannot pair for certain."""
    finder, tensors = LayerFinder(model.graph), graph.tensors()

    def layer_outputs(layer: str, what: str, single: bool = False) -> list[gs.Variable]:
        outputs = [tensors[name] for name in finder.outputs(layer)]
        if not outputs:
            raise BadInput(
                f"{path}: not a torchvision Mask R-CNN export: no {what} found (a layer with the weight '{layer}.weight')"
            )
        if single and len(outputs) != 1:
            raise BadInput(f"{path}: expected one {what} (weight '{layer}.weight'), found {len(outputs)}")
        return outputs

    objectness = layer_outputs(OBJECTNESS, "RPN objectness convolution")
    rpn_deltas = layer_outputs(RPN_DELTAS, "RPN box-delta convolution")
    [class_logits] = layer_outputs(CLASS_LOGITS, "box classifier", single=True)
    [box_regression] = layer_outputs(BOX_REGRESSION, "box regressor", single=True)
    [mask_logits] = layer_outputs(MASK_LOGITS, "mask predictor", single=True)
    rpn_deltas = _pair_by_input(objectness, rpn_deltas, path)
    consumers = consumer_map(graph)
    order = _level_order(objectness, consumers, path)
    objectness, rpn_deltas = [objectness[i] for i in order], [rpn_deltas[i] for i in order]

    roi_aligns = [n for n in graph.nodes if n.op == "RoiAlign"]
    before_boxes, before_masks = ancestors([class_logits]), ancestors([mask_logits])
    box_aligns = [n for n in roi_aligns if id(n) in before_boxes]
    mask_aligns = [n for n in roi_aligns if id(n) in before_masks and id(n) not in before_boxes]
    opset = int(graph.opset)
    nodes = {id(n): n for n in graph.nodes}
    box_pool = _pool_site(nodes, consumers, box_aligns, class_logits, opset, path, "box head")
    mask_pool = _pool_site(nodes, consumers, mask_aligns, mask_logits, opset, path, "mask head")

    image_inputs = [t for t in graph.inputs if t.dtype == np.float32 and t.shape is not None and len(t.shape) in (3, 4)]
    if not image_inputs:
        raise BadInput(f"{path}: no float32 image input ([3,H,W] or [B,3,H,W]) found")
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
        cell_anchors=_cell_anchors(graph, objectness, path),
    )
    parts.graph_settings = _graph_settings(graph, parts)
    return parts


def _pair_by_input(objectness: list[gs.Variable], deltas: list[gs.Variable], path: Path) -> list[gs.Variable]:
    """Orders the RPN box deltas like objectness: the two convolutions of a level read the same tensor."""
    by_input = {id(d.inputs[0].inputs[0]): d for d in deltas}
    paired = [by_input.get(id(o.inputs[0].inputs[0])) for o in objectness]
    if any(p is None for p in paired) or len(deltas) != len(objectness):
        raise BadInput(f"{path}: the RPN head's objectness and box-delta outputs do not pair up level by level")
    return paired  # type: ignore[return-value]


def _level_order(objectness: list[gs.Variable], consumers: dict[int, list[gs.Node]], path: Path) -> list[int]:
    """The RPN's own level order: the order in which it concatenates the flattened objectness of its levels
    (concat_box_prediction_layers), which is AnchorGenerator's order too."""
    producers = {id(o.inputs[0]): i for i, o in enumerate(objectness)}
    queue, seen = list(consumers.get(id(objectness[0]), [])), set[int]()
    while queue and len(seen) < 64:
        node = queue.pop(0)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op == "Concat" and len(node.inputs) == len(objectness):
            owners = [[producers[n] for n in ancestors([t]) if n in producers] for t in node.inputs]
            if all(len(o) == 1 for o in owners) and sorted(o[0] for o in owners) == list(range(len(objectness))):
                return [o[0] for o in owners]
        queue.extend(c for t in node.outputs for c in consumers.get(id(t), []))
    if len(objectness) == 1:
        return [0]
    raise BadInput(f"{path}: could not find where the RPN concatenates the objectness of its {len(objectness)} levels")


def _backbone_input(graph: gs.Graph, objectness: list[gs.Variable], path: Path) -> gs.Variable:
    """The tensor the first convolution reads: torchvision's normalised, resized, padded image batch."""
    backbone = ancestors(objectness)
    convs = [n for n in graph.nodes if n.op == "Conv" and id(n) in backbone]
    # A first convolution's data input has no convolution upstream: its producer is neither one nor downstream of one.
    after_conv = descendants(consumer_map(graph), [t for n in convs for t in n.outputs]) | {id(n) for n in convs}
    firsts = [n for n in convs if not any(id(p) in after_conv for p in n.inputs[0].inputs)]
    inputs = {id(n.inputs[0]): n.inputs[0] for n in firsts}
    if len(inputs) != 1:
        raise BadInput(f"{path}: expected the backbone to start with convolutions of one image batch, found {len(inputs)}")
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


def padding_divisor(graph: gs.Graph, parts: ExportedParts) -> int | None:
    """size_divisible as the traced transform rounds the batch up to it, ceil(side / stride) * stride, whose stride is
    a constant even where the resize before it was traced to fixed sizes; None where no such rounding is found."""
    upstream = ancestors([parts.backbone_input])
    strides = set()
    for node in graph.nodes:
        if node.op != "Ceil" or id(node) not in upstream or not node.inputs[0].inputs:
            continue
        divide = node.inputs[0].inputs[0]
        stride = scalar_constant(divide.inputs[1]) if divide.op == "Div" else None
        multiplied = [c for c in node.outputs[0].outputs if c.op == "Mul" and stride in map(scalar_constant, c.inputs)]
        if stride is not None and multiplied:
            strides.add(stride)
    if len(strides) != 1:
        return None
    stride = strides.pop()
    return int(stride) if stride.is_integer() else None


def preprocessing(graph: gs.Graph, parts: ExportedParts, batch: int, size: tuple[int, int]) -> Preprocessing:
    """Runs the export's own transform (its image inputs to the batch its backbone reads) in ONNX Runtime on images
    of `size`, to see what GeneralizedRCNNTransform does to them: its resize (min_size, max_size) and its padding
    (size_divisible), whatever the torchvision version traced them into."""
    upstream = ancestors([parts.backbone_input])
    # Only the transform is copied: a copy of the whole export took half of surgery's time on small models.
    transform = gs.Graph(
        nodes=[n for n in graph.nodes if id(n) in upstream],
        inputs=parts.image_inputs,
        outputs=[parts.backbone_input],
        opset=graph.opset,
        import_domains=graph.import_domains,
    )
    copy = transform.copy()
    tensors = copy.tensors()
    inputs = [tensors[t.name] for t in parts.image_inputs]
    backbone_input = tensors[parts.backbone_input.name]
    resizes = [n for n in copy.nodes if n.op == "Resize"]
    for tensor in tensors.values():  # the export's own shapes hold for the size it was traced at only
        if isinstance(tensor, gs.Variable) and tensor not in inputs:
            tensor.shape = None
    for tensor in inputs:
        tensor.shape = [batch, 3, *size] if len(tensor.shape) == 4 else [3, *size]
    copy.inputs = inputs
    copy.outputs = [backbone_input, *[t for n in resizes for t in (n.inputs[0], n.outputs[0])]]
    for tensor in copy.outputs:
        tensor.dtype = tensor.dtype or np.float32
    model = gs.export_onnx(copy.cleanup())
    model.ir_version = onnx.helper.find_min_ir_version_for(model.opset_import, ignore_unknown=True)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(None, {t.name: np.zeros(t.shape, np.float32) for t in inputs})
    resized = [tuple(after.shape[-2:]) for before, after in zip(values[1::2], values[2::2]) if before.shape != after.shape]
    return Preprocessing(resized=resized[0] if resized else size, padded=tuple(values[0].shape[-2:]))


def _pool_site(
    nodes: dict[int, gs.Node],
    consumers: dict[int, list[gs.Node]],
    aligns: list[gs.Node],
    head_output: gs.Variable,
    opset: int,
    path: Path,
    head: str,
) -> PoolSite:
    """The head's MultiScaleRoIAlign: which map each LevelMapper level reads, found from the graph's structure."""
    if not aligns:
        raise BadInput(f"{path}: no RoiAlign nodes feed the {head}: not a torchvision Mask R-CNN export")
    first = aligns[0].attrs
    if any(a.attrs.get("mode", "avg") != "avg" for a in aligns):
        raise BadInput(f"{path}: the {head}'s RoiAlign uses max pooling; torchvision's MultiScaleRoIAlign averages")
    if len({(a.attrs.get("output_height"), a.attrs.get("output_width"), a.attrs.get("sampling_ratio")) for a in aligns}) > 1:
        raise BadInput(f"{path}: the {head}'s RoiAlign nodes differ in output size or sampling ratio")
    if first.get("output_height", 1) != first.get("output_width", 1):
        raise BadInput(f"{path}: the {head} pools to a non-square size, which MultilevelRoIAlign does not support")
    # Opset 16 added coordinate_transformation_mode with half_pixel (aligned=True) as its default; before it,
    # RoiAlign had no half-pixel offset.
    mode = first.get("coordinate_transformation_mode", "half_pixel" if opset >= 16 else "output_half_pixel")
    pooling = {
        "output_size": int(first.get("output_height", 1)),
        "sampling_ratio": int(first.get("sampling_ratio", 0)),
        "aligned": int(mode == "half_pixel"),
    }
    if len(aligns) == 1:  # one map: torchvision pools it without LevelMapper
        level = _level_of_scale(aligns[0], path, head)
        return PoolSite(
            pooled=aligns[0].outputs[0],
            features=[aligns[0].inputs[0]],
            attrs=MultilevelRoIAlignAttrs(**pooling, min_level=level, max_level=level),
            rois=aligns[0].inputs[1],
            mapper_source="not used",
        )

    read, levels = _map_indices(nodes, aligns)
    indices = [i for i in read if i is not None]
    if len(indices) != len(aligns) or levels is None:
        indices = _indices_by_scale(aligns, path, head)
    by_index: dict[int, gs.Node] = {}
    for align, index in zip(aligns, indices):
        if index in by_index:
            raise BadInput(
                f"{path}: the {head} pools LevelMapper's map {index} from either {by_index[index].inputs[0].name} or "
                f"{align.inputs[0].name}: cannot tell which"
            )
        by_index[index] = align
    mapper = _level_mapper(levels) if levels is not None else None
    if mapper is not None:
        min_level, max_level, canonical_scale, canonical_level, eps = mapper
        source = "graph"
    else:  # torchvision's own rule: the levels of the first and the last map it pools
        defaults = MultilevelRoIAlignAttrs(**pooling)
        min_level, max_level = _level_of_scale(by_index[0], path, head), _level_of_scale(by_index[max(by_index)], path, head)
        canonical_scale, canonical_level, eps = defaults.canonical_scale, defaults.canonical_level, defaults.eps
        source = "torchvision default"
    features = []
    for level in range(min_level, max_level + 1):
        align = by_index.get(level - min_level)
        if align is None:
            raise BadInput(f"{path}: the {head}'s LevelMapper assigns level {level}, which no RoiAlign pools")
        if _level_of_scale(align, path, head) != level:
            raise BadInput(
                f"{path}: the {head} pools LevelMapper's level {level} from {align.inputs[0].name} at spatial scale "
                f"{align.attrs.get('spatial_scale', 1.0)}, not 1/{2**level}, which MultilevelRoIAlign cannot express"
            )
        features.append(align.inputs[0])
    attrs = MultilevelRoIAlignAttrs(
        **pooling,
        canonical_scale=canonical_scale,
        canonical_level=canonical_level,
        min_level=min_level,
        max_level=max_level,
        eps=eps,
    )
    return PoolSite(
        pooled=_merge_point(nodes, consumers, aligns, head_output, path, head),
        features=features,
        attrs=attrs,
        rois=aligns[0].inputs[1],
        mapper_source=source,
    )


def _level_of_scale(align: gs.Node, path: Path, head: str) -> int:
    scale = float(align.attrs.get("spatial_scale", 1.0))
    level = round(-math.log2(scale))
    if not math.isclose(scale, 2.0**-level, rel_tol=1e-6):
        raise BadInput(f"{path}: the {head}'s RoiAlign scale {scale} is not a power of two")
    return level


def _map_indices(nodes: dict[int, gs.Node], aligns: list[gs.Node]) -> tuple[list[int | None], gs.Tensor | None]:
    """Which of LevelMapper's maps each RoiAlign pools, and LevelMapper's output: torchvision pools map k from
    the RoIs where `levels == k`, an Equal with the constant k upstream of that RoiAlign's RoIs and of no other's."""
    upstream = [ancestors(a.inputs[1:]) for a in aligns]
    shared = set.intersection(*upstream)
    indices: list[int | None] = []
    levels: dict[int, gs.Tensor] = {}
    for own in upstream:
        found = []
        for node in (nodes[i] for i in own - shared if i in nodes):
            if node.op != "Equal" or len(node.inputs) != 2:
                continue
            for tensor, other in (node.inputs, node.inputs[::-1]):
                value = constant_value(other)
                integer = value is not None and value.size == 1 and np.issubdtype(value.dtype, np.integer)
                if integer and constant_value(tensor) is None:
                    found.append((tensor, int(value.item())))
        if len(found) == 1:
            levels[id(found[0][0])] = found[0][0]
        indices.append(found[0][1] if len(found) == 1 else None)
    return indices, next(iter(levels.values())) if len(levels) == 1 else None


def _indices_by_scale(aligns: list[gs.Node], path: Path, head: str) -> list[int]:
    """Map indices from the maps' strides, finest first, where the graph does not say them: certain only when no two
    maps have the same stride."""
    scales = [float(a.attrs.get("spatial_scale", 1.0)) for a in aligns]
    for i, j in itertools.combinations(range(len(aligns)), 2):
        if math.isclose(scales[i], scales[j], rel_tol=1e-6):
            raise BadInput(
                f"{path}: the {head} pools from {aligns[i].inputs[0].name} and {aligns[j].inputs[0].name}, two maps of "
                "the same stride, and the graph does not show which RoIs each one pools: cannot tell them apart"
            )
    order = sorted(range(len(aligns)), key=lambda i: -scales[i])
    return [order.index(i) for i in range(len(aligns))]


def _level_mapper(levels: gs.Tensor) -> tuple[int, int, float, int, float] | None:
    """torchvision's LevelMapper as traced, levels = clamp(floor(lvl0 + log2(sqrt(area) / s0) + eps), k_min, k_max)
    - k_min: (k_min, k_max, s0, lvl0, eps) from its constants; None where the graph computes the levels otherwise."""
    steps: list[tuple[str, list[float]]] = []
    tensor = levels
    while len(steps) < 16 and len(tensor.inputs) == 1 and tensor.inputs[0].op != "Sqrt":
        node = tensor.inputs[0]
        data = [t for t in node.inputs if t.name and constant_value(t) is None]
        if len(data) != 1:
            return None
        if node.op != "Cast":
            constants = [constant_value(t) for t in node.inputs if t.name and t is not data[0]]
            steps.append((node.op, [float(c.ravel()[0]) for c in constants if c is not None]))
        tensor = data[0]
    if steps[:1] and steps[0][0] == "Clip":  # the exporter drops `- k_min` where k_min is 0 (a map of scale 1)
        steps.insert(0, ("Sub", [0.0]))
    if [op for op, _ in steps] != ["Sub", "Clip", "Floor", "Add", "Add", "Div", "Log", "Div"]:
        return None
    [k_min], [low, high], _, [eps], [lvl0], [ln2], _, [s0] = (values for _, values in steps)
    if low != k_min or not math.isclose(ln2, math.log(2), rel_tol=1e-6) or lvl0 != round(lvl0):
        return None
    return int(low), int(high), s0, int(lvl0), eps


def _merge_point(
    nodes: dict[int, gs.Node], consumers: dict[int, list[gs.Node]], aligns: list[gs.Node], head_output: gs.Variable,
    path: Path, head: str,
) -> gs.Variable:
    """The first tensor that holds every level's pooled RoIs: MultiScaleRoIAlign's result, the head's input. It is
    made by the one node, downstream of every RoiAlign, that reads nothing made downstream of every RoiAlign."""
    common = ancestors([head_output])
    for align in aligns:
        common &= descendants(consumers, align.outputs)
    earliest = [
        nodes[i] for i in common if i in nodes and not any(id(p) in common for t in node_inputs(nodes[i]) for p in t.inputs)
    ]
    if len(earliest) != 1:
        names = ", ".join(sorted(n.name for n in earliest)) or "nowhere"
        raise BadInput(f"{path}: the {head}'s pooled RoIs from all levels meet in {names}, not in one tensor")
    return earliest[0].outputs[0]


def _cell_anchors(graph: gs.Graph, objectness: list[gs.Variable], path: Path) -> list[np.ndarray | None]:
    """Per RPN level, the cell anchors [A, 4] that AnchorGenerator adds to the level's grid of shifts (None where the
    graph has none), paired with the level by structure: the grid is the Shape of the feature map that the level's
    RPN head reads."""
    anchors_per_location = objectness[0].inputs[0].inputs[1].shape[0]
    adds = []  # (the Add node, the tensors whose Shape gave its grid, its cell anchors)
    for node in graph.nodes:
        if node.op != "Add":
            continue
        for i, tensor in enumerate(node.inputs):
            value = constant_value(tensor)
            if value is not None and value.dtype == np.float32 and value.shape == (1, anchors_per_location, 4):
                adds.append((node, _shape_sources(node.inputs[1 - i]), value.reshape(-1, 4)))
    sources = {id(t): t for _, shaped, _ in adds for t in shaped if t.inputs}
    upstream: dict[int, set[int]] = {}
    cells: list[np.ndarray | None] = []
    for level in objectness:
        above = ancestors([level])
        inside = [t for t in sources.values() if id(t.inputs[0]) in above]
        for t in inside:
            upstream.setdefault(id(t), ancestors([t]))
        nearest = [t for t in inside if not any(id(t.inputs[0]) in upstream[id(u)] for u in inside if u is not t)]
        if len(nearest) > 1:
            raise BadInput(
                f"{path}: the RPN level {level.name} reads {' and '.join(t.name for t in nearest)}, each the source of an "
                "anchor grid: cannot tell which grid its anchors follow"
            )
        candidates = {c.tobytes(): (node, c) for node, shaped, c in adds if nearest and any(t is nearest[0] for t in shaped)}
        if len(candidates) > 1:
            names = ", ".join(node.name for node, _ in candidates.values())
            raise BadInput(
                f"{path}: the anchors of the RPN level that reads {nearest[0].name} could be any of {len(candidates)} "
                f"different sets ({names}): cannot tell which"
            )
        cells.append(next(iter(candidates.values()))[1] if candidates else None)
    return cells


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


def _graph_settings(graph: gs.Graph, parts: ExportedParts) -> dict[str, float | tuple[float, ...]]:
    """Thresholds, top-n values and box coder settings as torchvision's traced code leaves them in the graph.

    RPN: TopK per level (k = min(pre_nms_top_n, anchors)), score >= score_thresh, box sides >= min_size,
    batched_nms(iou), keep[:post_nms_top_n]. Box head: score > score_thresh, sides >= min_size, batched_nms(iou),
    keep[:detections_per_img]. Both decode boxes as BoxCoder.decode_single: deltas[:, k::4] / weights[k], then
    dw and dh clamped to bbox_xform_clip. Each value is read from the constant the op uses.
    """
    consumers = consumer_map(graph)
    rpn = descendants(consumers, [*parts.objectness, *parts.rpn_deltas]) & ancestors([parts.box_pool.rois])
    boxes = descendants(consumers, [parts.class_logits, parts.box_regression]) & ancestors([parts.mask_pool.rois])
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
            elif node.op == "Div" and (column := _delta_column(node.inputs[0])) is not None:
                _store(found, f"{prefix}_weight_{column}", scalar_constant(node.inputs[1]))
            elif node.op == "Clip" and len(node.inputs) == 3 and _is_weighted_delta(node.inputs[0]):
                _store(found, f"{prefix}_xform_clip", scalar_constant(node.inputs[2]))
    settings: dict[str, float | tuple[float, ...]] = {
        k: v for k, v in found.items() if "_weight_" not in k and "_xform_" not in k
    }
    for prefix, name in (("rpn", "rpn_box_weights"), ("box", "box_weights")):
        weights = [found.get(f"{prefix}_weight_{k}") for k in range(4)]
        if all(w is not None for w in weights):
            settings[name] = tuple(weights)  # type: ignore[arg-type]
    clips = {found[k] for k in ("rpn_xform_clip", "box_xform_clip") if k in found}
    if len(clips) == 1:  # one bbox_xform_clip serves both decoders, as in torchvision
        settings["bbox_xform_clip"] = clips.pop()
    return settings


def _is_weighted_delta(tensor: gs.Tensor) -> bool:
    """deltas[:, k::4] / weights[k], what bbox_xform_clip clamps."""
    return len(tensor.inputs) == 1 and tensor.inputs[0].op == "Div" and _delta_column(tensor.inputs[0].inputs[0]) is not None


def _delta_column(tensor: gs.Tensor) -> int | None:
    """k for BoxCoder's deltas[:, k::4] (a Slice with step 4 from k < 4), else None."""
    if len(tensor.inputs) != 1 or tensor.inputs[0].op != "Slice" or len(tensor.inputs[0].inputs) != 5:
        return None
    _, starts, _, _, steps = tensor.inputs[0].inputs
    start, step = scalar_constant(starts), scalar_constant(steps)
    return int(start) if step == 4 and start is not None and 0 <= start < 4 else None


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
