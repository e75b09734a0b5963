"""The TensorRT versions maskrt builds for, and what each one's ONNX parser takes (`maskrt lint --target`).

The operator sets are onnx-tensorrt's docs/operators.md, the rows marked supported: release/8.5-GA, 8.6-GA, 10.0-GA
(the oldest TensorRT 10; JetPack 6.1/6.2 ship 10.3, whose parser adds no operator a Mask R-CNN uses) and, for 11,
10.15-GA's table (the newest published) plus Swish, which the 11.0 parser added. Each target lists what it adds to
the one before, so the table reads as the history it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskrt.contracts.precisions import TENSORRT_TARGETS

_TRT85_OPS = frozenset(
    """Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
    Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
    Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements GatherND Gemm GlobalAveragePool
    GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample HardSigmoid HardSwish Identity If ImageScaler
    InstanceNormalization IsNaN LRN LSTM LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul
    Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad
    ParametricSoftplus Pow QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
    Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round ScaledTanh Scan Scatter ScatterElements
    ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
    Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor""".split()
)
# 8.5 is also the first with RoiAlign (the ROIAlign_TRT plugin), NonZero and native NonMaxSuppression (INMSLayer).
_ADDED_IN_86 = frozenset({"GroupNormalization", "IsInf", "LayerNormalization"})
_ADDED_IN_10 = frozenset({"CastLike", "Gelu", "Hardmax", "Mish"})
_ADDED_IN_11 = frozenset(
    # 10.1 to 10.15, then 11.0's Swish.
    {"DeformConv", "BlackmanWindow", "HammingWindow", "HannWindow", "STFT", "Attention", "RMSNormalization",
     "RotaryEmbedding", "TensorScatter", "Swish"}
)

# TensorRT's own limits, which a graph of static shapes can still exceed.
TOPK_MAX_K = 3840  # ITopKLayer
NMS_MAX_BOXES = 5000  # INMSLayer's TopK box limit: candidates per batch item beyond it are silently dropped


@dataclass(frozen=True)
class Target:
    name: str  # as --target spells it
    version: str
    platforms: str
    ops: frozenset[str]
    max_opset: int
    plugins: bool  # IPluginV3, which maskrt's plugins are
    int64: bool  # int64 tensors as such; before 9.0 the parser narrows them to int32


TARGETS = {
    target.name: target
    for target in (
        Target(TENSORRT_TARGETS[0], "8.5", "JetPack 5.1: Xavier, Orin", _TRT85_OPS, 17, plugins=False, int64=False),
        Target(TENSORRT_TARGETS[1], "8.6", "JetPack 6.0, x86", _TRT85_OPS | _ADDED_IN_86, 17, plugins=False, int64=False),
        Target(
            TENSORRT_TARGETS[2], "10", "JetPack 6.1/6.2 with 10.3, JetPack 7, x86", _TRT85_OPS | _ADDED_IN_86 | _ADDED_IN_10, 20,
            plugins=True, int64=True,
        ),
        Target(
            TENSORRT_TARGETS[3], "11", "x86, JetPack 7.2", _TRT85_OPS | _ADDED_IN_86 | _ADDED_IN_10 | _ADDED_IN_11, 24,
            plugins=True, int64=True,
        ),
    )
}


def default_target(has_plugin_nodes: bool) -> Target:
    """The oldest TensorRT that builds the graph: 8.5 for standard ONNX, 10 (IPluginV3) for maskrt's plugins."""
    return TARGETS["trt10" if has_plugin_nodes else "trt8.5"]


def first_target_with(op: str) -> Target | None:
    return next((target for target in TARGETS.values() if op in target.ops), None)
