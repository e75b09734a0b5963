"""Small tools over onnx-graphsurgeon graphs shared by surgery and lint: walking, constants, shapes, emitting ops."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

INT64 = np.int64


def all_nodes(graph: gs.Graph) -> Iterator[gs.Node]:
    """Every node, including those inside If/Loop/Scan bodies."""
    for node in graph.nodes:
        yield node
        for subgraph in node.attrs.values():
            if isinstance(subgraph, gs.Graph):
                yield from all_nodes(subgraph)


def node_inputs(node: gs.Node) -> list[gs.Tensor]:
    """A node's inputs, including the outer tensors that its If/Loop bodies read."""
    inputs = [t for t in node.inputs if t is not None]
    for subgraph in node.attrs.values():
        if isinstance(subgraph, gs.Graph):
            nodes = list(all_nodes(subgraph))
            produced = {id(t) for n in nodes for t in n.outputs} | {id(t) for t in subgraph.inputs}
            inputs += [t for n in nodes for t in n.inputs if id(t) not in produced]
    return inputs


def ancestors(tensors: Iterable[gs.Tensor]) -> set[int]:
    """ids of the nodes that the tensors depend on."""
    seen: set[int] = set()
    stack = [n for t in tensors for n in t.inputs]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(p for t in node_inputs(node) for p in t.inputs)
    return seen


def consumer_map(graph: gs.Graph) -> dict[int, list[gs.Node]]:
    """ids of tensors → the top-level nodes that read them; an If/Loop reads what its bodies read.

    Built once per use and passed to descendants(), since it walks the whole graph."""
    consumers: dict[int, list[gs.Node]] = {}
    for node in graph.nodes:
        for tensor in node_inputs(node):
            consumers.setdefault(id(tensor), []).append(node)
    return consumers


def descendants(consumers: dict[int, list[gs.Node]], tensors: Iterable[gs.Tensor]) -> set[int]:
    """ids of the top-level nodes that depend on the tensors, given the graph's consumer_map()."""
    seen: set[int] = set()
    stack = [n for t in tensors for n in consumers.get(id(t), [])]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(c for t in node.outputs for c in consumers.get(id(t), []))
    return seen


def constant_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a tensor that is a constant, a Constant node's output, or a cast or reshape of one."""
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) != 1:
        return None
    node = tensor.inputs[0]
    if node.op == "Constant":
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
        for key in ("value_float", "value_int", "value_floats", "value_ints"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
        return None
    if node.op in ("Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten") and node.inputs:
        return constant_value(node.inputs[0])
    return None


def scalar_constant(tensor: gs.Tensor | None) -> float | None:
    value = constant_value(tensor)
    return float(value.ravel()[0]) if value is not None and value.size == 1 else None


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset of the default (ai.onnx) domain; 0 if it imports none."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def infer_shapes(graph: gs.Graph) -> None:
    """Sets every tensor's dtype and shape from ONNX shape inference.

    Data propagation resolves the shapes that torchvision computes with Shape → Gather → Concat chains (FPN
    upsampling), so a static input gives static shapes all the way down.
    """
    graph.toposort()  # shape inference reads the nodes in order
    inputs = {id(t) for t in graph.inputs}
    tensors = graph.tensors()
    for tensor in tensors.values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in inputs and tensor.inputs and tensor.inputs[0].domain in ("", "ai.onnx", None):
            tensor.shape = None  # stale shapes from an earlier graph would win over the inferred ones
    model = gs.export_onnx(graph, do_type_check=False)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = tensors.get(info.name)
        kind = info.type.tensor_type
        if not isinstance(tensor, gs.Variable) or not kind.HasField("shape"):
            continue
        tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)
        tensor.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in kind.shape.dim]


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    shape = tensor.shape
    if shape is None or not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


@dataclass
class Emitter:
    """Appends nodes to a graph under one name prefix: `emit("Add", a, b)` returns the output tensor."""

    graph: gs.Graph
    prefix: str
    _count: int = field(default=0, repr=False)

    def __call__(
        self, op: str, *inputs: Any, outputs: int = 1, domain: str | None = None, into: gs.Variable | None = None, **attrs: Any
    ) -> Any:
        """Appends one node; `into` makes an existing tensor (one whose producer was cut away) its output."""
        name = self._name(op)
        tensors = [into] if into is not None else [gs.Variable(f"{name}_output_{i}") for i in range(outputs)]
        node = gs.Node(op, name, attrs, [self.tensor(x) for x in inputs], tensors, domain=domain)
        self.graph.nodes.append(node)
        return tensors[0] if outputs == 1 else tensors

    def tensor(self, value: Any) -> gs.Tensor:
        """A graph tensor for value: tensors pass through, arrays and numbers become constants."""
        if isinstance(value, gs.Tensor):
            return value
        return gs.Constant(self._name("const"), np.asarray(value))

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"{self.prefix}/{kind}_{self._count}"


def columns(emit: Emitter, tensor: gs.Tensor, start: int, end: int) -> gs.Variable:
    """tensor[..., start:end]."""
    return emit("Slice", tensor, np.array([start], INT64), np.array([end], INT64), np.array([-1], INT64))


def gather_rows(emit: Emitter, table: gs.Tensor, index: gs.Tensor, count: int) -> gs.Variable:
    """table [B,N,4] (boxes or box deltas), index [B,K] int64 → [B,K,4]: each image's rows at its own indices."""
    rows = emit("Expand", emit("Reshape", index, np.array([-1, count, 1], INT64)), np.array([1, count, 4], INT64))
    return emit("GatherElements", table, rows, axis=1)


def row_numbers(emit: Emitter, tensor: gs.Tensor) -> gs.Variable:
    """[N] int64 0..N-1 for the N rows of `tensor`, whatever N is: a dynamic-batch graph computes it at run time,
    and constant folding makes it a constant in a static one."""
    rows = emit("Squeeze", emit("Slice", emit("Shape", tensor), np.array([0], INT64), np.array([1], INT64)), np.array([0], INT64))
    return emit("Range", np.array(0, INT64), rows, np.array(1, INT64))
