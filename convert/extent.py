"""Each image's own extent in the letterboxed canvas, so that the deploy graph answers as torchvision does on the
image alone.

torchvision pads a resized image only up to the next multiple of size_divisible (its "padded extent"); the deploy
graph runs every image on the whole H×W canvas. Three things then differ, and each is made to follow the
`image_sizes` input here:
- the backbone, FPN and RPN head: a convolution or pooling at the edge of the padded extent reads zeros in torchvision
  but activations of the padding in the canvas. The input of every such op is multiplied by a mask that is zero
  outside the extent (at that op's resolution), and a global average is rescaled from the canvas to the extent;
- the anchors: torchvision lays them out over its padded extent only, with strides padded side // grid side, which
  differ from the canvas' on a coarse level whose grid was rounded up (a pool level of a side / 32 that is odd);
- RoIAlign clamps its samples to the last row and column of the map, which in torchvision is the extent's edge: the
  maps it pools from are extended beyond the extent by repeating that edge; the samples past it, which torchvision
  reads as zero, are taken out of the average (pooling_share).
Proposals and boxes are clipped to the image sizes themselves (rebuild.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs

from maskrt.contracts.errors import BadInput
from maskrt.contracts.plugins import MultilevelRoIAlignAttrs
from maskrt.contracts.records import REBUILT_PREFIX
from maskrt.convert import native_ops
from maskrt.convert.graphs import INT64, Emitter, consumer_map, descendants, static_shape
from maskrt.convert.locate import ExportedParts

# Ops that read a neighbourhood of each position, and so see what lies beyond the extent.
_WINDOWED = ("Conv", "MaxPool", "AveragePool", "LpPool")
# Ops that mix positions in a way a mask cannot make equal to torchvision's smaller tensor.
_UNFOLLOWABLE = ("ConvTranspose", "ReduceMean", "ReduceMax", "ReduceSum", "GlobalMaxPool", "GlobalLpPool", "Flatten")


@dataclass
class ImageExtent:
    """The per-image extents as graph tensors, made on first use at each resolution."""

    emit: Emitter
    image_sizes: gs.Variable  # [B,2] int32 (h, w) inside the canvas
    padded: tuple[int, int]  # the canvas padded to size_divisible, what the backbone runs on
    divisible: int
    # The multiplies put inside the reused backbone: named apart from the rebuilt middle (REBUILT_PREFIX), which stays
    # FP32, so that they take the backbone's precision (times 0 or 1 is exact in FP16).
    inside_backbone: Emitter
    _index: gs.Variable | None = None
    _masks: dict[tuple[int, int], gs.Variable] = field(default_factory=dict)

    def extents(self, size: tuple[int, int]) -> tuple[gs.Variable, gs.Variable]:
        """How many rows and columns of an (h, w) map lie inside each image's padded extent: two [B,1] int64."""
        return self._per_image(extent_table, size)

    def strides(self, size: tuple[int, int]) -> tuple[gs.Variable, gs.Variable]:
        """AnchorGenerator's strides of an (h, w) grid, padded side // grid side per image: two [B,1] int64."""
        return self._per_image(stride_table, size)

    def _per_image(
        self, table: Callable[[int, int, int], np.ndarray], size: tuple[int, int]
    ) -> tuple[gs.Variable, gs.Variable]:
        """Each image's row of `table` for the rows, then for the columns, of an (h, w) map."""
        rows = self.emit("Gather", table(self.padded[0], size[0], self.divisible), self._padded_index(0), axis=0)
        cols = self.emit("Gather", table(self.padded[1], size[1], self.divisible), self._padded_index(1), axis=0)
        return rows, cols

    def inside(self, size: tuple[int, int]) -> gs.Variable:
        """[B,h,w] bool: the positions of an (h, w) map inside each image's padded extent."""
        rows, cols = self.extents(size)
        inside_rows = self.emit("Less", np.arange(size[0], dtype=INT64).reshape(1, -1, 1), self.emit("Unsqueeze", rows, np.array([2], INT64)))
        inside_cols = self.emit("Less", np.arange(size[1], dtype=INT64).reshape(1, 1, -1), self.emit("Unsqueeze", cols, np.array([2], INT64)))
        return self.emit("And", inside_rows, inside_cols)

    def mask(self, size: tuple[int, int]) -> gs.Variable:
        """[B,1,h,w] float32: 1 inside each image's padded extent, 0 outside."""
        if size not in self._masks:
            inside = self.emit("Unsqueeze", self.inside(size), np.array([1], INT64))
            self._masks[size] = self.emit("Cast", inside, to=1)  # onnx.TensorProto.FLOAT
        return self._masks[size]

    def _padded_index(self, axis: int) -> gs.Variable:
        """[B,2] → [B,1] row of the extent tables: ceil(side / size_divisible) - 1, kept inside the tables."""
        if self._index is None:
            sides = self.emit("Cast", self.image_sizes, to=7)  # onnx.TensorProto.INT64
            steps = self.emit("Div", self.emit("Add", sides, np.int64(self.divisible - 1)), np.int64(self.divisible))
            most = np.array([[p // self.divisible - 1 for p in self.padded]], INT64)
            self._index = self.emit("Min", self.emit("Max", self.emit("Sub", steps, np.int64(1)), np.int64(0)), most)
        column = self.emit("Slice", self._index, np.array([axis], INT64), np.array([axis + 1], INT64), np.array([1], INT64))
        return self.emit("Reshape", column, np.array([-1], INT64))

    def anchors(self, index: gs.Tensor, size: tuple[int, int], cells: np.ndarray) -> gs.Variable:
        """AnchorGenerator's anchors [B,N,4] at `index` [B,N] (row, column, cell order) of an (h, w) grid, at each
        image's strides: the integer shift plus the cell anchor, in float32 as torchvision adds them."""
        per_location = np.int64(len(cells))
        location = self.emit("Div", index, per_location)
        cell = self.emit("Sub", index, self.emit("Mul", location, per_location))
        row = self.emit("Div", location, np.int64(size[1]))
        col = self.emit("Sub", location, self.emit("Mul", row, np.int64(size[1])))
        stride_rows, stride_cols = self.strides(size)
        x = self.emit("Unsqueeze", self.emit("Mul", col, stride_cols), np.array([2], INT64))
        y = self.emit("Unsqueeze", self.emit("Mul", row, stride_rows), np.array([2], INT64))
        shifts = self.emit("Cast", self.emit("Concat", x, y, x, y, axis=2), to=1)  # onnx.TensorProto.FLOAT
        return self.emit("Add", shifts, self.emit("Gather", cells.astype(np.float32), cell, axis=0))

    def pooling_share(self, rois: gs.Tensor, map_sizes: list[tuple[int, int]], attrs: MultilevelRoIAlignAttrs) -> gs.Variable:
        """[B,R,1,S,S]: what RoI pooling on the canvas' maps, extended past each image's padded extent by their edge,
        is multiplied by to read zero past that extent, where torchvision's maps end: the share of a bin's samples
        that torchvision keeps over the share the canvas' map keeps (native_ops.inside_share, which says why this
        is exact for RoIs inside the image). rois [B,R,4] in input pixels, legacy roi_align (aligned=False)."""
        emit = self.emit
        count = int(rois.shape[1])
        flat = emit("Reshape", rois, np.array([-1, 4], INT64))
        level, _ = native_ops.roi_levels(emit, flat, attrs)  # a RoI without a level is pooled as zeros anyway
        scale = emit("Unsqueeze", emit("Gather", native_ops.level_scales(attrs), level, axis=0), np.array([1], INT64))
        on_map = emit("Mul", flat, scale)
        map_sides = emit("Gather", np.array([[w, h] for h, w in map_sizes], np.float32), level, axis=0)  # [N,2]
        extents = []  # per level [B,1,2]: (w, h) of each image's padded extent on that level's map
        for size in map_sizes:
            rows, cols = self.extents(size)
            extents.append(emit("Unsqueeze", emit("Concat", cols, rows, axis=1), np.array([1], INT64)))
        table = emit("Cast", emit("Concat", *extents, axis=1), to=1)  # [B,L,2]
        # Each RoI reads its own image's row of its level; GatherElements keeps the batch symbolic and every other
        # dimension static, so that one graph runs any batch.
        per_image = emit("Reshape", level, np.array([-1, count, 1], INT64))
        chosen = emit("GatherElements", table, emit("Concat", per_image, per_image, axis=2), axis=1)  # [B,R,2]
        extent_sides = emit("Reshape", chosen, np.array([-1, 2], INT64))  # [N,2]
        kept = native_ops.inside_share(emit, on_map, extent_sides, attrs)
        kept_on_canvas = native_ops.inside_share(emit, on_map, map_sides, attrs)
        share = emit("Where", emit("Greater", kept_on_canvas, np.float32(0)), emit("Div", kept, kept_on_canvas), np.float32(0))
        size = attrs.output_size
        return emit("Reshape", share, np.array([-1, count, 1, size, size], INT64))

    def clip_limits(self, rank: int) -> gs.Variable:
        """(w, h, w, h) of each image as float32 [B,1,...,1,4] for boxes of the given rank."""
        sides = self.emit("Cast", self.image_sizes, to=1)  # onnx.TensorProto.FLOAT
        limits = self.emit("Gather", sides, np.array([1, 0, 1, 0], INT64), axis=1)
        return self.emit("Reshape", limits, np.array([-1, *[1] * (rank - 2), 4], INT64))


def extent_table(canvas_side: int, map_side: int, divisible: int) -> np.ndarray:
    """[n, 1] int64: the side of torchvision's map for a padded image side of divisible * (1..n), where the canvas
    side `canvas_side` gives a map side `map_side`.

    Maps at a stride that divides size_divisible cover padded side / stride; coarser ones (FPN's pool level) come
    from halving the stride-size_divisible map k times, each rounding up: ceil(padded side / (divisible * 2^k)).
    """
    padded = np.arange(1, canvas_side // divisible + 1) * divisible
    stride = canvas_side // map_side
    if canvas_side % map_side == 0 and divisible % stride == 0:
        return (padded // stride).reshape(-1, 1).astype(INT64)
    coarsest = canvas_side // divisible
    for halvings in range(1, 16):
        coarsest = math.ceil(coarsest / 2)
        if coarsest == map_side:
            return np.ceil(padded / (divisible * 2**halvings)).reshape(-1, 1).astype(INT64)
    raise BadInput(f"a feature map of side {map_side} does not follow from a canvas side {canvas_side} by halving")


def stride_table(canvas_side: int, map_side: int, divisible: int) -> np.ndarray:
    """[n, 1] int64: AnchorGenerator's stride, padded side // map side, for each padded side of extent_table."""
    padded = np.arange(1, canvas_side // divisible + 1).reshape(-1, 1) * divisible
    return (padded // extent_table(canvas_side, map_side, divisible)).astype(INT64)


def follow_image_extent(
    graph: gs.Graph,
    parts: ExportedParts,
    image_sizes: gs.Variable,
    padded: tuple[int, int],
    divisible: int,
    path: Path,
) -> ImageExtent:
    """Masks the inputs of the backbone's, FPN's and RPN head's windowed ops, rescales their global averages, and
    points both heads' RoI pooling at maps extended by their edge; the graph must hold only the reused parts with
    shapes inferred."""
    extent = ImageExtent(Emitter(graph, f"{REBUILT_PREFIX}/extent"), image_sizes, padded, divisible, Emitter(graph, "/backbone/extent"))
    consumers = consumer_map(graph)
    heads = descendants(consumers, [parts.box_pool.pooled, parts.mask_pool.pooled])
    masked: dict[int, gs.Variable] = {}
    for node in [n for n in graph.nodes if id(n) not in heads]:
        data = node.inputs[0] if node.inputs else None
        shape = static_shape(data) if isinstance(data, gs.Variable) else None
        if shape is None or len(shape) != 4:
            continue
        size = (shape[2], shape[3])
        if node.op in _UNFOLLOWABLE:
            raise BadInput(
                f"{path}: the backbone's {node.op} node {node.name} mixes positions in a way that cannot follow each "
                "image's extent; convert with --single-input"
            )
        if node.op == "GlobalAveragePool":
            node.inputs[0] = _masked(extent, masked, data, size)
            _rescale_average(extent, node, size)
        elif node.op in _WINDOWED and _reads_neighbours(node):
            node.inputs[0] = _masked(extent, masked, data, size)
    edged: dict[int, gs.Variable] = {}
    for site in (parts.box_pool, parts.mask_pool):
        site.features = [_edge_extended(extent, edged, feature) for feature in site.features]
    return extent


def _reads_neighbours(node: gs.Node) -> bool:
    """Whether a windowed op reads past its own position: a kernel over 1, or padding."""
    kernel = node.attrs.get("kernel_shape")
    if kernel is None and node.op == "Conv" and len(node.inputs) > 1:
        kernel = list(node.inputs[1].shape[2:]) if node.inputs[1].shape is not None else None
    pads = node.attrs.get("pads", [0])
    return kernel is None or any(int(k) > 1 for k in kernel) or any(int(p) for p in pads) or node.attrs.get("auto_pad", "NOTSET") != "NOTSET"


def _masked(extent: ImageExtent, masked: dict[int, gs.Variable], data: gs.Variable, size: tuple[int, int]) -> gs.Variable:
    if id(data) not in masked:
        masked[id(data)] = extent.inside_backbone("Mul", data, extent.mask(size))
        masked[id(data)].dtype, masked[id(data)].shape = data.dtype, data.shape
    return masked[id(data)]


def _rescale_average(extent: ImageExtent, node: gs.Node, size: tuple[int, int]) -> None:
    """The mean over the masked canvas → the mean over the extent: times canvas area / extent area."""
    average = node.outputs[0]
    rows, cols = extent.extents(size)
    area = extent.emit("Cast", extent.emit("Mul", rows, cols), to=1)
    factor = extent.emit("Reshape", extent.emit("Div", np.float32(size[0] * size[1]), area), np.array([-1, 1, 1, 1], INT64))
    rescaled = gs.Variable(f"{average.name}/extent", average.dtype, average.shape)
    for consumer in list(average.outputs):
        for position, tensor in enumerate(consumer.inputs):
            if tensor is average:
                consumer.inputs[position] = rescaled
    extent.inside_backbone("Mul", average, factor, into=rescaled)


def _edge_extended(extent: ImageExtent, done: dict[int, gs.Variable], feature: gs.Variable) -> gs.Variable:
    """feature [B,C,h,w] with every row and column past the extent a copy of the extent's last one."""
    if id(feature) in done:
        return done[id(feature)]
    shape = static_shape(feature)
    if shape is None or len(shape) != 4:
        raise BadInput(f"the pooled feature map {feature.name} has no static [B,C,H,W] shape")
    _, channels, height, width = shape
    rows, cols = extent.extents((height, width))
    emit = extent.emit
    row_index = emit("Min", np.arange(height, dtype=INT64).reshape(1, -1), emit("Sub", rows, np.int64(1)))  # [B,h]
    col_index = emit("Min", np.arange(width, dtype=INT64).reshape(1, -1), emit("Sub", cols, np.int64(1)))  # [B,w]
    # Broadcast over the batch rather than to it, so that one graph runs any batch.
    every_image = np.array([1, channels, height, width], INT64)
    row_index = emit("Expand", emit("Reshape", row_index, np.array([-1, 1, height, 1], INT64)), every_image)
    col_index = emit("Expand", emit("Reshape", col_index, np.array([-1, 1, 1, width], INT64)), every_image)
    extended = emit("GatherElements", emit("GatherElements", feature, row_index, axis=2), col_index, axis=3)
    extended.dtype, extended.shape = feature.dtype, list(shape)
    done[id(feature)] = extended
    return extended
