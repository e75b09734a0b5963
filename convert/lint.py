"""Checks that a deploy graph is one TensorRT builds with no data-dependent shapes.

Rules: every tensor has a static shape (the one exception: native-mode NonMaxSuppression's selected indices, whose
length TensorRT's INMSLayer bounds, as long as they are scattered back into static tensors before any output); no
If, Loop, Scan, NonZero or other op whose output size depends on the data; every op is in the ONNX operator support
matrix of TensorRT 8.6 (JetPack 5), which TensorRT 10 extends, or is one of maskrt's plugins; int64 never at the
graph's edges and never beyond int32's range (TensorRT 8.6 narrows int64 to int32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from rich.console import Console
from rich.table import Table

from maskrt.convert.graphs import consumer_map, default_opset, descendants, infer_shapes, static_shape
from maskrt.plugins.contracts import BATCHED_NMS, ONNX_DOMAIN, PLUGIN_NAMESPACE, ROI_ALIGN

# onnx-tensorrt's operator support matrix for TensorRT 8.6, the oldest TensorRT maskrt targets (JetPack 5.1).
TENSORRT_OPS = frozenset(
    """Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
    Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
    Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool
    GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSigmoid HardSwish Identity If ImageScaler
    InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul
    Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
    Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
    ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
    Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor""".split()
)
DATA_DEPENDENT_OPS = frozenset({"If", "Loop", "Scan", "NonZero", "Unique", "Compress"})
PLUGIN_OPS = frozenset({ROI_ALIGN, BATCHED_NMS})
NEWEST_JETPACK5_OPSET = 17


@dataclass(frozen=True)
class Problem:
    where: str  # a node or tensor name
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def lint_model(model: onnx.ModelProto) -> list[Problem]:
    """lint_graph() of the model, its shapes inferred anew."""
    graph = gs.import_onnx(model)
    infer_shapes(graph)
    return lint_graph(graph)


def lint_graph(graph: gs.Graph) -> list[Problem]:
    """The problems of a graph whose shapes infer_shapes() has set."""
    problems = []
    for node in graph.nodes:
        where = f"{node.op} '{node.name}'"
        if node.op in PLUGIN_OPS and node.domain == ONNX_DOMAIN:
            if node.attrs.get("plugin_namespace") != PLUGIN_NAMESPACE:
                problems.append(Problem(where, f"plugin node without plugin_namespace='{PLUGIN_NAMESPACE}'"))
        elif node.domain not in (None, "", "ai.onnx"):
            problems.append(Problem(where, f"op of domain '{node.domain}', which TensorRT's ONNX parser cannot build"))
        elif node.op in DATA_DEPENDENT_OPS:
            problems.append(Problem(where, "output size depends on the data (or control flow): not a static graph"))
        elif node.op not in TENSORRT_OPS:
            problems.append(Problem(where, "not in TensorRT's ONNX operator support matrix"))

    nms_outputs = [t for n in graph.nodes if n.op == "NonMaxSuppression" for t in n.outputs]
    bounded = descendants(consumer_map(graph), nms_outputs)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            if tensor.values.dtype == np.int64 and tensor.values.size and np.abs(tensor.values).max() > np.iinfo(np.int32).max:
                problems.append(Problem(tensor.name, "int64 constant beyond int32's range (TensorRT 8.6 narrows it)"))
            continue
        if static_shape(tensor) is not None:
            continue
        producer = tensor.inputs[0] if tensor.inputs else None
        if producer is not None and (producer.op == "NonMaxSuppression" or id(producer) in bounded):
            continue
        problems.append(Problem(tensor.name, f"shape {tensor.shape} is not static"))
    for tensor in [*graph.inputs, *graph.outputs]:
        if tensor.dtype == np.int64:
            problems.append(Problem(tensor.name, "int64 graph input/output; TensorRT 8.6 needs int32"))
        if static_shape(tensor) is None:
            problems.append(Problem(tensor.name, f"graph input/output shape {tensor.shape} is not static"))
    return problems


def lint_file(path: Path, console: Console | None = None) -> None:
    """Prints what violates and where; raises ValueError (exit 2) when anything does."""
    console = console or Console(stderr=True)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        model = onnx.load(path)
    except (DecodeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path}: not a readable ONNX model ({type(error).__name__})") from None
    problems = lint_model(model)
    opset = default_opset(model)
    if opset > NEWEST_JETPACK5_OPSET:
        console.print(f"note: opset {opset}: JetPack 5's TensorRT 8.6 parses opsets up to {NEWEST_JETPACK5_OPSET}", style="yellow")
    if not problems:
        console.print(f"{path}: ok: {len(model.graph.node)} nodes, static shapes, TensorRT-buildable ops")
        return
    table = Table(title=f"{path}: {len(problems)} problems", title_justify="left")
    table.add_column("where")
    table.add_column("what")
    for problem in problems:
        table.add_row(problem.where, problem.what)
    console.print(table)
    raise ValueError(f"{path}: not a TensorRT-ready deploy graph: {problems[0]}")
