"""A dynamic-batch deploy graph (`trt-convert --max-batch N`): the batch of the reused parts follows the input's.

The rebuilt middle is written for any batch (every shape it makes leaves the batch to the tensors). The parts reused
from the export are convolutions that take any batch, unless the export baked its traced batch into a constant: a
shape computed from a tensor's Shape that a graph optimiser (onnxsim, onnxslim, constant folding) turned into
numbers. Those that name the batch as a shape's first number are rewritten to follow the tensor's own batch
(Resize sizes, Reshape and Expand shapes); any other tensor whose first dimension stays at the traced batch is
refused, named.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs

from maskrt.contracts.errors import BadInput
from maskrt.contracts.records import BATCH_DIM
from maskrt.convert.graphs import INT64, Emitter, consumer_map, descendants, infer_shapes

# The input that carries a shape, per op, and what its first number becomes when it is the traced batch: "copy"
# (Reshape's 0 copies the input's dimension), "broadcast" (Expand's 1 keeps it), "shape" (the input's own batch).
_SHAPE_INPUTS = {"Reshape": (1, "copy"), "Expand": (1, "broadcast"), "Resize": (3, "shape")}


def follow_batch(graph: gs.Graph, images: gs.Variable, batch: int, path: Path) -> None:
    """Rewrites the constants of the reused parts that fix the traced `batch`, then checks, by shape inference at
    another batch, that every floating-point tensor computed from `images` has the batch as its first dimension.

    `graph` holds only the reused parts, with `images` [batch,3,H,W] among its inputs (surgery's cut); the heads,
    which read the pooled RoIs rather than the images, are not concerned."""
    infer_shapes(graph)
    consumers = consumer_map(graph)
    from_images = descendants(consumers, [images])
    from_rois = descendants(consumers, [t for t in graph.inputs if t is not images])
    backbone = [node for node in graph.nodes if id(node) in from_images and id(node) not in from_rois]
    emit = Emitter(graph, "/backbone/batch")
    for node in backbone:
        _follow(emit, node, batch)
    _check_follows(graph, images, backbone, batch, path)


def _follow(emit: Emitter, node: gs.Node, batch: int) -> None:
    """One node's constant shape whose first number is the traced batch, made to follow its data's batch."""
    if node.op not in _SHAPE_INPUTS or len(node.inputs) <= _SHAPE_INPUTS[node.op][0]:
        return
    index, how = _SHAPE_INPUTS[node.op]
    shape, data = node.inputs[index], node.inputs[0]
    if not isinstance(shape, gs.Constant) or shape.values.ndim != 1 or not shape.values.size:
        return
    values = np.asarray(shape.values)
    leading = data.shape[0] if data.shape else None
    if int(values[0]) != batch or leading != batch or node.attrs.get("allowzero", 0):
        return
    if how == "shape":
        own_batch = emit("Slice", emit("Shape", data), np.array([0], INT64), np.array([1], INT64))
        node.inputs[index] = emit("Concat", own_batch, values[1:].astype(INT64), axis=0)
    else:
        followed = values.copy()
        followed[0] = 0 if how == "copy" else 1
        node.inputs[index] = gs.Constant(f"{shape.name}/any_batch", followed)


def _check_follows(graph: gs.Graph, images: gs.Variable, nodes: list[gs.Node], batch: int, path: Path) -> None:
    """Infers the shapes at batch + 1: the first float tensor whose first dimension is not that is refused."""
    probe = batch + 1
    images.shape = [probe, *images.shape[1:]]
    infer_shapes(graph)
    try:
        for node in nodes:
            for tensor in node.outputs:
                if tensor.dtype is None or not np.issubdtype(np.dtype(tensor.dtype), np.floating):
                    continue
                leading = tensor.shape[0] if tensor.shape else None
                if leading != probe:
                    raise BadInput(
                        f"{path}: the export fixes the batch of tensor '{tensor.name}' ({node.op} node '{node.name}') "
                        f"at its traced {batch}, which a dynamic-batch graph cannot change; export it again without "
                        "folding shapes into constants (torch.onnx.export as maskrt export calls it, no onnxsim or "
                        "onnxslim), or convert without --max-batch"
                    )
    finally:
        images.shape = [batch, *images.shape[1:]]


def declare_batch(outputs: list[gs.Variable], path: Path) -> None:
    """The graph's outputs declared [BATCH_DIM, ...]: shape inference cannot name the batch through the -1 of a
    Reshape; every other dimension must be static."""
    for tensor in outputs:
        shape = list(tensor.shape or [])
        rest = shape[1:]
        if not shape or isinstance(shape[0], (int, np.integer)) or not all(isinstance(d, (int, np.integer)) for d in rest):
            raise BadInput(f"{path}: the dynamic-batch graph's output {tensor.name} has the shape {shape}, not [batch, ...static]")
        tensor.shape = [BATCH_DIM, *(int(d) for d in rest)]
