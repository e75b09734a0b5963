"""Checks that a deploy graph is one a given TensorRT builds, with no data-dependent shapes (`maskrt lint`).

Rules: every tensor has a static shape (the one exception: native-mode NonMaxSuppression's selected indices, whose
length TensorRT's INMSLayer bounds, as long as they are scattered back into static tensors before any output); no
If, Loop, Scan, NonZero or other op whose output size depends on the data; every op is in the target TensorRT's ONNX
operator matrix (convert/targets.py), or is one of maskrt's plugins on a TensorRT that has IPluginV3 (10 and later);
TensorRT's limits that static shapes can still break: TopK's k and the boxes into one NonMaxSuppression; before
TensorRT 9, no int64 at the graph's edges and none beyond int32's range (the parser narrows int64 to int32).

A dynamic-batch graph (`trt-convert --max-batch`) may have a symbolic batch, the first dimension of its inputs and
outputs, and nothing else symbolic: it is checked with the batch fixed at its maximum (its DeployRecord's max_batch),
where every tensor must be static and TensorRT's limits hold.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs
from rich.console import Console

from maskrt.contracts.errors import BadInput
from maskrt.contracts.files import read_onnx
from maskrt.contracts.plugins import BATCHED_NMS, ONNX_DOMAIN, PLUGIN_NAMESPACE, ROI_ALIGN
from maskrt.contracts.records import read_deploy_record
from maskrt.convert.graphs import constant_value, consumer_map, default_opset, descendants, infer_shapes, static_shape
from maskrt.convert.targets import NMS_MAX_BOXES, TARGETS, TOPK_MAX_K, Target, default_target, first_target_with

DATA_DEPENDENT_OPS = frozenset({"If", "Loop", "Scan", "NonZero", "Unique", "Compress"})
PLUGIN_OPS = frozenset({ROI_ALIGN, BATCHED_NMS})
SHOWN_PER_KIND = 3

# The kinds of problem, in the order the report lists them.
NOT_STATIC = "not static"
DATA_DEPENDENT = "data-dependent"
UNSUPPORTED_OP = "not in the operator matrix"
PLUGIN = "plugin"
OTHER_DOMAIN = "other domain"
LIMIT = "over a TensorRT limit"
INT64 = "int64"
KINDS = (NOT_STATIC, DATA_DEPENDENT, UNSUPPORTED_OP, PLUGIN, OTHER_DOMAIN, LIMIT, INT64)


@dataclass(frozen=True)
class Problem:
    where: str  # a node or tensor name
    what: str
    kind: str  # one of KINDS

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def has_plugin_nodes(graph: gs.Graph) -> bool:
    return any(node.op in PLUGIN_OPS and node.domain == ONNX_DOMAIN for node in graph.nodes)


def lint_graph(graph: gs.Graph, target: Target | None = None, max_batch: int | None = None) -> list[Problem]:
    """The problems of a graph whose shapes infer_shapes() has set, for `target` (default: the oldest TensorRT that
    the graph's plugin mode allows); with `max_batch` (a dynamic-batch graph), the first dimension of its inputs and
    outputs may be symbolic, and the graph is checked with it fixed at max_batch."""
    target = target or default_target(has_plugin_nodes(graph))
    problems = [] if max_batch is None else _batch_problems(graph)
    if max_batch is not None and not problems:
        graph = _at_batch(graph, max_batch)
    problems += [problem for node in graph.nodes for problem in _node_problems(node, target)]

    nms_outputs = [t for n in graph.nodes if n.op == "NonMaxSuppression" for t in n.outputs]
    bounded = descendants(consumer_map(graph), nms_outputs)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            values = tensor.values
            beyond_int32 = values.dtype == np.int64 and values.size and np.abs(values).max() > np.iinfo(np.int32).max
            if beyond_int32 and not target.int64:
                what = f"int64 constant beyond int32's range (TensorRT {target.version} narrows it)"
                problems.append(Problem(tensor.name, what, INT64))
            continue
        if static_shape(tensor) is not None:
            continue
        producer = tensor.inputs[0] if tensor.inputs else None
        if producer is not None and (producer.op == "NonMaxSuppression" or id(producer) in bounded):
            continue
        problems.append(Problem(tensor.name, f"shape {tensor.shape} is not static", NOT_STATIC))
    for tensor in [*graph.inputs, *graph.outputs]:
        if tensor.dtype == np.int64 and not target.int64:
            what = f"int64 graph input/output; TensorRT {target.version} needs int32"
            problems.append(Problem(tensor.name, what, INT64))
        if static_shape(tensor) is None:
            problems.append(Problem(tensor.name, f"graph input/output shape {tensor.shape} is not static", NOT_STATIC))
    return problems


def _batch_problems(graph: gs.Graph) -> list[Problem]:
    """A dynamic-batch graph's inputs and outputs: symbolic in nothing but their first dimension."""
    problems = []
    for tensor in [*graph.inputs, *graph.outputs]:
        if not all(isinstance(d, (int, np.integer)) for d in (tensor.shape or [None])[1:]):
            what = f"shape {tensor.shape}: only the batch, the first dimension, may be symbolic"
            problems.append(Problem(tensor.name, what, NOT_STATIC))
    return problems


def _at_batch(graph: gs.Graph, batch: int) -> gs.Graph:
    """A copy of the graph with its symbolic batch fixed at `batch` and its shapes inferred again."""
    fixed = graph.copy()
    for tensor in fixed.tensors().values():
        shape = tensor.shape if isinstance(tensor, gs.Variable) else None
        if shape and not isinstance(shape[0], (int, np.integer)):
            tensor.shape = [batch, *shape[1:]]  # the inputs, and the plugins' outputs (shape inference keeps them)
    infer_shapes(fixed)
    return fixed


def _node_problems(node: gs.Node, target: Target) -> list[Problem]:
    where = f"{node.op} '{node.name}'"
    if node.op in PLUGIN_OPS and node.domain == ONNX_DOMAIN:
        if not target.plugins:
            what = f"maskrt plugins need TensorRT 10 or later (IPluginV3), not {target.version}; use --plugins native"
            return [Problem(where, what, PLUGIN)]
        if node.attrs.get("plugin_namespace") != PLUGIN_NAMESPACE:
            return [Problem(where, f"plugin node without plugin_namespace='{PLUGIN_NAMESPACE}'", PLUGIN)]
        return []
    if node.domain not in (None, "", "ai.onnx"):
        what = f"op of domain '{node.domain}', which TensorRT's ONNX parser cannot build"
        return [Problem(where, what, OTHER_DOMAIN)]
    if node.op in DATA_DEPENDENT_OPS:
        return [Problem(where, "output size depends on the data (or control flow): not a static graph", DATA_DEPENDENT)]
    if node.op not in target.ops:
        first = first_target_with(node.op)
        since = f" (from TensorRT {first.version} on)" if first else ""
        return [Problem(where, f"not in TensorRT {target.version}'s ONNX operator matrix{since}", UNSUPPORTED_OP)]
    if node.op == "TopK":
        k = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if k is not None and k.size == 1 and int(k.ravel()[0]) > TOPK_MAX_K:
            what = f"k = {int(k.ravel()[0])}, above the {TOPK_MAX_K} of TensorRT's TopK; lower the top-n settings"
            return [Problem(where, what, LIMIT)]
    if node.op == "NonMaxSuppression":
        shape = static_shape(node.inputs[0])
        if shape is not None and len(shape) == 3 and shape[1] > NMS_MAX_BOXES:
            what = (
                f"{shape[1]} boxes per batch item, above the {NMS_MAX_BOXES} that TensorRT's NonMaxSuppression "
                "considers (it would drop the lowest-scoring ones); lower the top-n settings or use --plugins maskrt"
            )
            return [Problem(where, what, LIMIT)]
    return []


def lint_file(path: Path, target: str | None = None, show_all: bool = False, console: Console | None = None) -> None:
    """Prints what violates and where, summarised by kind; raises ValueError (exit 2) when anything does."""
    console = console or Console(stderr=True)
    model = read_onnx(path)
    record = read_deploy_record(model, path)
    graph = gs.import_onnx(model)
    infer_shapes(graph)
    chosen = TARGETS[target] if target else default_target(has_plugin_nodes(graph))
    problems = lint_graph(graph, chosen, record.max_batch if record is not None else None)
    name = f"TensorRT {chosen.version} ({chosen.platforms})"
    opset = default_opset(model)
    if opset > chosen.max_opset:
        console.print(f"note: opset {opset}: {name} parses opsets up to {chosen.max_opset}", style="yellow")
    if not problems:
        batch = f" (batch 1 to {record.max_batch}, checked at {record.max_batch})" if record and record.max_batch else ""
        console.print(f"{path}: ok for {name}: {len(model.graph.node)} nodes, static shapes{batch}, TensorRT-buildable ops")
        return
    _print_report(console, f"{path}: {len(problems)} problems for {name}", problems, show_all)
    counts = Counter(p.kind for p in problems)
    summary = ", ".join(f"{kind}: {counts[kind]}" for kind in KINDS if counts[kind])
    raise BadInput(f"{path}: not ready for TensorRT {chosen.version}: {len(problems)} problems ({summary})")


def _print_report(console: Console, title: str, problems: list[Problem], show_all: bool) -> None:
    """Each kind of problem with its count and its first few instances (all of them with show_all)."""
    console.print(title)
    for kind in KINDS:
        found = [p for p in problems if p.kind == kind]
        if not found:
            continue
        console.print(f"  {kind}: {len(found)}", style="bold")
        shown = found if show_all else found[:SHOWN_PER_KIND]
        for problem in shown:
            console.print(f"    {problem}")
        if len(found) > len(shown):
            console.print(f"    ... {len(found) - len(shown)} more (--all lists every one)", style="dim")
