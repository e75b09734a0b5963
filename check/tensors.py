"""The dense tensors that compare element by element across PyTorch, the export and every deploy graph.

FPN levels, RPN objectness and box deltas per level, the box head's class logits and box regression, and the mask
head's logits. In an ONNX graph each is found by the state_dict name of the layer that makes it (the weights keep
their names from torch.onnx.export through surgery, FP16 and INT8), so a tensor is matched by what it is, whatever
the graph calls it; in PyTorch by the module of the same name. Box- and mask-head tensors have one row per proposal
or per detection: rows are compared for the proposals and detections both sides have, image by image.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from polygraphy.comparator import IterationResult
from polygraphy.comparator.compare import SimpleCompareFunc

from maskrt.contracts.errors import BadInput
from maskrt.contracts.layers import (
    BOX_REGRESSION,
    CLASS_LOGITS,
    MASK_LOGITS,
    OBJECTNESS,
    RPN_DELTAS,
    RPN_HEAD,
    LayerFinder,
)

_FPN_OUTPUT = re.compile(r"backbone\.fpn\.layer_blocks\.(\d+)\.")
# What the RPN head's convolutions may be followed by, on the way from an FPN map to its logits.
_ACTIVATIONS = ("Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "BatchNormalization")
PROPOSALS, DETECTIONS = "proposals", "detections"

# A tensor's error, comparable from tensor to tensor: the ERROR_QUANTILE of |error| / mean |reference|. A quantile,
# not the maximum, so that the few rows of proposals that differ where objectness ties at the top-n cut do not count.
ERROR_QUANTILE = 0.99
# |error| / mean |reference| of each element is counted in these log10 bins.
HISTOGRAM_EDGES = np.arange(-9.0, 1.01, 0.5)


@dataclass(frozen=True)
class DenseTensor:
    """One dense tensor: its role (the same in every backend), and its name in one graph."""

    role: str  # "backbone.fpn[0]", "rpn.head.cls_logits[0]", ..., "roi_heads.mask_predictor.mask_fcn_logits"
    name: str  # the tensor's name in this graph


def find_dense_tensors(model: onnx.ModelProto, path: Path) -> list[DenseTensor]:
    """The dense tensors of an export or deploy graph (FP32, FP16 or INT8), in data-flow order."""
    graph = model.graph
    finder = LayerFinder(graph)
    producer, source, weight, output = finder.producer, finder.source, finder.weight, finder.output
    position = {id(node): i for i, node in enumerate(graph.node)}

    masks = _extent_masks(graph)

    def unmasked(name: str) -> str:
        """The map itself where the graph multiplies it by an image-extent mask (a tensor made from `image_sizes`
        alone) before a convolution reads it."""
        node = producer.get(name)
        if node is not None and node.op_type == "Mul" and len(node.input) == 2:
            data, mask = node.input if node.input[1] in masks else reversed(node.input)
            if mask in masks and data not in masks:
                return source(data)
        return name

    def level_input(node: onnx.NodeProto) -> str:
        """The FPN map the RPN head reads on its way to `node`: up through the head's own layers and activations."""
        name = unmasked(source(node.input[0]))
        while name in producer:
            up = producer[name]
            if not (weight(up).startswith(RPN_HEAD) or up.op_type in _ACTIVATIONS):
                break
            name = unmasked(source(up.input[0]))
        return name

    def level_order(level: str) -> tuple[int, int]:
        """torchvision's FPN lists layer_blocks 0, 1, ... then the extra levels (the max-pooled one)."""
        node = producer.get(level)
        found = _FPN_OUTPUT.match(weight(node)) if node is not None else None
        return (int(found.group(1)), 0) if found else (1 << 20, position[id(node)] if node is not None else 0)

    objectness, deltas = finder.layers(OBJECTNESS), finder.layers(RPN_DELTAS)
    if not objectness or len(objectness) != len(deltas):
        raise BadInput(f"{path}: no RPN head found (layers with the weights {OBJECTNESS}.weight and {RPN_DELTAS}.weight)")
    by_level: dict[str, dict[str, str]] = {}
    for prefix, nodes in ((OBJECTNESS, objectness), (RPN_DELTAS, deltas)):
        for node in nodes:
            by_level.setdefault(level_input(node), {})[prefix] = output(node)
    levels = sorted(by_level, key=level_order)
    found = [DenseTensor(f"backbone.fpn[{i}]", level) for i, level in enumerate(levels)]
    for prefix in (OBJECTNESS, RPN_DELTAS):
        found += [DenseTensor(f"{prefix}[{i}]", by_level[level][prefix]) for i, level in enumerate(levels)]
    for prefix in (CLASS_LOGITS, BOX_REGRESSION, MASK_LOGITS):
        nodes = finder.layers(prefix)
        if len(nodes) != 1:
            raise BadInput(f"{path}: expected one layer with the weight {prefix}.weight, found {len(nodes)}")
        found.append(DenseTensor(prefix, output(nodes[0])))
    return found


def _extent_masks(graph: onnx.GraphProto) -> set[str]:
    """Tensors computed from the `image_sizes` input and no other: the masks of each image's extent in the canvas."""
    inputs = [graph_input.name for graph_input in graph.input]
    if "image_sizes" not in inputs:
        return set()
    from_sizes, from_images = {"image_sizes"}, {name for name in inputs if name != "image_sizes"}
    for node in graph.node:  # in topological order
        for reached in (from_sizes, from_images):
            if any(name in reached for name in node.input):
                reached.update(node.output)
    return from_sizes - from_images


@dataclass
class Captured:
    """What the PyTorch model computed on its way to the detections, call by call (a batch, or one image at a time):
    the dense tensors by role, and how many proposals and detections each image has head rows for."""

    calls: list[dict[str, np.ndarray]] = field(default_factory=list)
    proposals: list[int] = field(default_factory=list)  # per image
    detections: list[int] = field(default_factory=list)

    def images(self) -> list[dict[str, np.ndarray]]:
        """Each image's tensors: [1, ...] maps and its own rows of the head tensors."""
        found = []
        for call in self.calls:
            images = len(call["backbone.fpn[0]"])
            first = len(found)
            for b in range(images):
                found.append({role: value[b : b + 1] for role, value in call.items() if row_kind(role) is None})
            for kind, counts in ((PROPOSALS, self.proposals), (DETECTIONS, self.detections)):
                starts = np.concatenate([[0], np.cumsum(counts[first : first + images])]).astype(int)
                for b in range(images):
                    found[first + b].update(
                        {role: value[starts[b] : starts[b + 1]] for role, value in call.items() if row_kind(role) == kind}
                    )
        return found


@contextmanager
def capture(model: torch.nn.Module) -> Iterator[Captured]:
    """Records the dense tensors of every detection pass of `model` inside the block (forward hooks)."""
    captured = Captured()

    def keep(role: str, value: torch.Tensor) -> None:
        if role == "backbone.fpn[0]":
            captured.calls.append({})
        # The oracle runs the mask predictor once more on zeros to learn M: only a pass's first call counts.
        captured.calls[-1].setdefault(role, value.detach().numpy().copy())

    def backbone(_module: torch.nn.Module, _inputs: object, features: dict[str, torch.Tensor]) -> None:
        for i, level in enumerate(features.values()):
            keep(f"backbone.fpn[{i}]", level)

    def rpn_head(_module: torch.nn.Module, _inputs: object, outputs: tuple[list[torch.Tensor], list[torch.Tensor]]) -> None:
        for prefix, levels in zip((OBJECTNESS, RPN_DELTAS), outputs):
            for i, level in enumerate(levels):
                keep(f"{prefix}[{i}]", level)

    def rpn(_module: torch.nn.Module, _inputs: object, outputs: tuple[list[torch.Tensor], object]) -> None:
        captured.proposals += [len(boxes) for boxes in outputs[0]]

    def box_predictor(_module: torch.nn.Module, _inputs: object, outputs: tuple[torch.Tensor, torch.Tensor]) -> None:
        keep(CLASS_LOGITS, outputs[0])
        keep(BOX_REGRESSION, outputs[1])

    def mask_predictor(_module: torch.nn.Module, _inputs: object, logits: torch.Tensor) -> None:
        if captured.calls:
            keep(MASK_LOGITS, logits)

    def roi_heads(_module: torch.nn.Module, _inputs: object, outputs: tuple[list[dict[str, torch.Tensor]], object]) -> None:
        captured.detections += [len(found["boxes"]) for found in outputs[0]]

    heads = model.roi_heads  # type: ignore[union-attr]
    hooks = [
        model.backbone.register_forward_hook(backbone),  # type: ignore[union-attr]
        model.rpn.head.register_forward_hook(rpn_head),  # type: ignore[union-attr]
        model.rpn.register_forward_hook(rpn),  # type: ignore[union-attr]
        heads.box_predictor.register_forward_hook(box_predictor),
        heads.mask_predictor.register_forward_hook(mask_predictor),
        heads.register_forward_hook(roi_heads),
    ]
    try:
        yield captured
    finally:
        for hook in hooks:
            hook.remove()


def row_kind(role: str) -> str | None:
    if role in (CLASS_LOGITS, BOX_REGRESSION):
        return PROPOSALS
    return DETECTIONS if role == MASK_LOGITS else None


@dataclass(frozen=True)
class RowLayout:
    """Where each image's rows of a graph's head tensors begin. None: rows of all images back to back, with no
    count of their own per image (the export's proposals)."""

    proposals: list[int] | None
    detections: list[int]


def graph_images(values: dict[str, np.ndarray], layout: RowLayout, batch: int) -> list[dict[str, np.ndarray]]:
    """A graph's dense tensors of one feed, image by image, as Captured.images gives PyTorch's."""
    found: list[dict[str, np.ndarray]] = [{} for _ in range(batch)]
    for role, value in values.items():
        kind = row_kind(role)
        if kind is None:
            for b in range(batch):
                found[b][role] = value[b : b + 1]
            continue
        starts = layout.proposals if kind == PROPOSALS else layout.detections
        if starts is None:
            if batch == 1:
                found[0][role] = value
            continue
        ends = list(starts[1:]) + [len(value)]
        for b in range(batch):
            found[b][role] = value[starts[b] : ends[b]]
    return found


def aligned(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], detection_pairs: Sequence[tuple[int, int]]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One image's tensors of both sides, cut to what they share: maps to the reference's extent (a deploy graph
    runs every image on the whole canvas, torchvision on the image's own padded extent), proposal rows paired as
    proposal_rows pairs them, and mask-head rows of the detections `detection_pairs` pairs (reference row,
    candidate row)."""
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    proposals = None
    if all(role in reference and role in candidate for role in (CLASS_LOGITS, BOX_REGRESSION)):
        joined = [np.concatenate([side[CLASS_LOGITS], side[BOX_REGRESSION]], axis=1) for side in (reference, candidate)]
        proposals = proposal_rows(*joined)
    for role, value in candidate.items():
        if role not in reference:
            continue
        ours, theirs = reference[role], value
        kind = row_kind(role)
        if kind is None:
            if ours.ndim != theirs.ndim or any(t < o for o, t in zip(ours.shape, theirs.shape)):
                continue
            theirs = theirs[tuple(slice(0, n) for n in ours.shape)]
        elif kind == PROPOSALS:
            if proposals is None:
                continue
            ours, theirs = ours[proposals[0]], theirs[proposals[1]]
        else:
            rows = np.array(detection_pairs, int).reshape(-1, 2)
            if len(rows) and (rows[:, 0].max() >= len(ours) or rows[:, 1].max() >= len(theirs)):
                continue
            ours, theirs = ours[rows[:, 0]], theirs[rows[:, 1]]
        pairs[role] = (ours, theirs)
    return pairs


def proposal_rows(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the same proposals in two images' [R, ...] box-head outputs: the reference's, as many as the candidate
    has room for (both sort proposals by objectness), each paired with the nearest candidate row not yet taken:
    proposals of equal objectness, common where it saturates at 1.0, come in either order."""
    n = min(len(reference), len(candidate))
    left = reference[:n].reshape(n, -1).astype(np.float64)
    right = candidate[:n].reshape(n, -1).astype(np.float64)
    distances = (left**2).sum(1)[:, None] + (right**2).sum(1)[None, :] - 2 * left @ right.T
    taken = np.zeros(n, bool)
    order = np.empty(n, int)
    for i in range(n):
        nearest = np.where(taken, np.inf, distances[i])
        # The row at the same position unless another is nearer: scores rarely tie.
        j = i if not taken[i] and distances[i, i] <= nearest.min() else int(np.argmin(nearest))
        taken[j], order[i] = True, j
    return np.arange(n), order


@dataclass
class TensorError:
    """One tensor's error against the reference over the images compared: Polygraphy's statistics (the worst feed's
    maxima, the average over feeds of the means), and `relative`, the worst feed's ERROR_QUANTILE of |error| over
    the reference's mean magnitude: the one number comparable from tensor to tensor."""

    role: str
    max_abs: float = 0.0
    mean_abs: float = 0.0
    max_rel: float = 0.0
    mean_rel: float = 0.0
    relative: float = 0.0
    compared: int = 0  # feeds compared
    histogram: list[int] | None = None  # counts of log10(|error| / mean |reference|) in HISTOGRAM_EDGES' bins

    def add(self, stats: object, relative: float, histogram: np.ndarray) -> None:
        self.max_abs = max(self.max_abs, _finite(stats.max_absdiff))  # type: ignore[attr-defined]
        self.max_rel = max(self.max_rel, _finite(stats.max_reldiff))  # type: ignore[attr-defined]
        count = self.compared
        self.mean_abs = (self.mean_abs * count + _finite(stats.mean_absdiff)) / (count + 1)  # type: ignore[attr-defined]
        self.mean_rel = (self.mean_rel * count + _finite(stats.mean_reldiff)) / (count + 1)  # type: ignore[attr-defined]
        self.relative = max(self.relative, relative)
        self.compared = count + 1
        self.histogram = np.add(self.histogram or 0, histogram).astype(int).tolist()


def _finite(value: float) -> float:
    return float(value) if np.isfinite(value) else float("inf")


def compare_tensors(pairs: dict[str, tuple[list[np.ndarray], list[np.ndarray]]], errors: dict[str, TensorError]) -> None:
    """Adds one feed's comparison of each role, (reference's, candidate's) aligned pieces of every image, to
    `errors`: Polygraphy's simple compare function on the pieces, flattened and joined."""
    left, right = OrderedDict(), OrderedDict()
    for role, (ours, theirs) in pairs.items():
        left[role] = np.concatenate([piece.ravel() for piece in ours]) if ours else np.zeros(0, np.float32)
        right[role] = np.concatenate([piece.ravel() for piece in theirs]) if theirs else np.zeros(0, np.float32)
    compare = SimpleCompareFunc(check_error_stat="quantile", error_quantile=ERROR_QUANTILE, atol=np.inf, rtol=np.inf)
    # Polygraphy measures the first result against the second: the candidate against the reference.
    results = compare(IterationResult(right, runner_name="candidate"), IterationResult(left, runner_name="reference"))
    for role, stats in results.items():
        if isinstance(stats, bool) or not left[role].size:
            continue
        reference, candidate = left[role].astype(np.float64), right[role].astype(np.float64)
        scale = float(np.abs(reference).mean())
        relative_error = np.abs(candidate - reference) / (scale if scale > 0 else 1.0)
        logs = np.log10(np.maximum(relative_error, 10.0 ** HISTOGRAM_EDGES[0]))
        histogram, _ = np.histogram(np.minimum(logs, HISTOGRAM_EDGES[-1]), HISTOGRAM_EDGES)
        relative = float(stats.quantile_absdiff) / (scale if scale > 0 else 1.0)
        errors.setdefault(role, TensorError(role)).add(stats, relative, histogram)


# A tensor's error "jumps" when it is this many times the largest error before it, and above the floor.
JUMP_FACTOR = 10.0
JUMP_FLOOR = 1e-4


def first_jump(errors: Sequence[TensorError]) -> TensorError | None:
    """The first tensor, in data-flow order, whose relative error is JUMP_FACTOR times any before it (and above
    JUMP_FLOOR): where a graph starts to answer differently."""
    before = 0.0
    for error in errors:
        if error.compared and error.relative >= max(JUMP_FACTOR * before, JUMP_FLOOR):
            return error
        if error.compared:
            before = max(before, error.relative)
    return None
