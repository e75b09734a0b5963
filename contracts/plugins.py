"""The contracts of maskrt's two TensorRT plugins (docs/design.md, "Plugins").

Surgery writes plugin nodes from these dataclasses; TensorRT's creators, the ONNX Runtime custom ops and the CPU
reference read them back with `read_attributes`, and all of them check inputs with `check_inputs`, so a bad node fails
with the same sentence wherever it is loaded.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, asdict, dataclass, fields
from typing import Any, Union

from maskrt.contracts.errors import BadInput

# The two ways surgery rebuilds RoI pooling and NMS: maskrt's plugins, or standard ONNX ops only.
PLUGIN_MODES = ("maskrt", "native")
PLUGIN_NAMESPACE = "maskrt"
PLUGIN_VERSION = "1"
# TensorRT's ONNX parser looks plugins up by op type (plus the plugin_version/plugin_namespace attributes) whatever
# the domain; "trt.plugins" is the domain NVIDIA's own tools (ModelOpt, Polygraphy) give plugin nodes.
ONNX_DOMAIN = "trt.plugins"
ROI_ALIGN = "MultilevelRoIAlign"
BATCHED_NMS = "BatchedNMS"
MAX_NMS_OUTPUT = 4096
MAX_LEVEL = 16  # the highest FPN level a MultilevelRoIAlign node may name
# Levels 0..MAX_LEVEL: the most feature maps a node can take (MASKRT_MAX_LEVELS in kernels/multilevel_roi_align.cu).
MAX_FEATURE_MAPS = MAX_LEVEL + 1


@dataclass(frozen=True)
class MultilevelRoIAlignAttrs:
    """torchvision MultiScaleRoIAlign: LevelMapper picks each RoI's level, then roi_align on that level."""

    output_size: int
    sampling_ratio: int  # 0 = adaptive, ceil(roi size / output size) per RoI as in torchvision
    aligned: int  # 1 shifts pixel centres by -0.5 (roi_align(aligned=True))
    canonical_scale: float = 224.0
    canonical_level: int = 4
    min_level: int = 2  # feature input i has stride 2 ** (min_level + i)
    max_level: int = 5
    eps: float = 1e-6

    @property
    def num_levels(self) -> int:
        return self.max_level - self.min_level + 1


@dataclass(frozen=True)
class BatchedNMSAttrs:
    """torchvision batched_nms per image: independent NMS per class, kept boxes in descending score, padded to K."""

    iou_threshold: float  # a box is suppressed when its IoU with a kept box is > iou_threshold
    score_threshold: float  # candidates need score > score_threshold
    max_output: int  # K
    class_agnostic: int = 0  # 1: all classes share one NMS
    background_class: int = -1  # a class index that is never a candidate; -1 for none


PluginAttrs = Union[MultilevelRoIAlignAttrs, BatchedNMSAttrs]

_RANGES: dict[str, tuple[float, float, str]] = {
    "output_size": (1, 64, "between 1 and 64"),
    "sampling_ratio": (0, 64, "between 0 (adaptive) and 64"),
    "aligned": (0, 1, "0 or 1"),
    "canonical_scale": (1e-6, math.inf, "> 0"),
    "canonical_level": (0, MAX_LEVEL, f"between 0 and {MAX_LEVEL}"),
    "min_level": (0, MAX_LEVEL, f"between 0 and {MAX_LEVEL}"),
    "max_level": (0, MAX_LEVEL, f"between 0 and {MAX_LEVEL}"),
    "eps": (0, 1, "between 0 and 1"),
    "iou_threshold": (0, 1, "between 0 and 1"),
    "score_threshold": (-math.inf, math.inf, "a finite number"),
    "max_output": (1, MAX_NMS_OUTPUT, f"between 1 and {MAX_NMS_OUTPUT}"),
    "class_agnostic": (0, 1, "0 or 1"),
    "background_class": (-1, math.inf, ">= -1"),
}

ATTRS_BY_OP: dict[str, type[MultilevelRoIAlignAttrs] | type[BatchedNMSAttrs]] = {
    ROI_ALIGN: MultilevelRoIAlignAttrs,
    BATCHED_NMS: BatchedNMSAttrs,
}


def read_attributes(op_type: str, node_name: str, values: Mapping[str, Any]) -> PluginAttrs:
    """Attributes of a plugin node from a name → value mapping (ONNX attributes, TensorRT plugin fields).

    Unknown names (plugin_version, plugin_namespace) are ignored; missing required ones, wrong types and values out
    of range raise ValueError naming the node and the attribute.
    """
    if op_type not in ATTRS_BY_OP:
        raise BadInput(f"{node_name}: unknown maskrt plugin op '{op_type}' (expected {ROI_ALIGN} or {BATCHED_NMS})")
    cls = ATTRS_BY_OP[op_type]
    kwargs: dict[str, Any] = {}
    for field in fields(cls):
        where = f"{op_type} node '{node_name}': attribute '{field.name}'"
        if field.name not in values:
            if field.default is MISSING:
                raise BadInput(f"{where} is missing")
            continue
        raw = _scalar(values[field.name])
        want_int = is_int_field(field)
        try:
            value = int(raw) if want_int else float(raw)
        except (TypeError, ValueError):
            raise BadInput(f"{where} must be {'an integer' if want_int else 'a number'}, got {raw!r}") from None
        if want_int and value != raw:
            raise BadInput(f"{where} must be an integer, got {raw!r}")
        low, high, expected = _RANGES[field.name]
        if not (low <= value <= high) or (not want_int and not math.isfinite(value)):
            raise BadInput(f"{where} = {raw!r} is out of range (expected {expected})")
        kwargs[field.name] = value
    attrs = cls(**kwargs)
    if isinstance(attrs, MultilevelRoIAlignAttrs) and not attrs.min_level <= attrs.max_level:
        raise BadInput(
            f"{op_type} node '{node_name}': attribute 'max_level' = {attrs.max_level} is below "
            f"'min_level' = {attrs.min_level}"
        )
    return attrs


def is_int_field(field: Field[Any]) -> bool:
    """An integer attribute (an int32 plugin field) rather than a float (float32)."""
    return field.type == "int"  # a string: this module's annotations are not evaluated


def onnx_attributes(attrs: PluginAttrs) -> dict[str, Any]:
    """The ONNX node attributes for a plugin node, with the version and namespace TensorRT's parser looks up."""
    return {**asdict(attrs), "plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}


def _scalar(raw: Any) -> Any:
    """A plugin field arrives from TensorRT as a one-element array; ONNX gives a plain number."""
    if hasattr(raw, "tolist"):
        raw = raw.tolist()
    if isinstance(raw, (list, tuple)) and len(raw) == 1:
        raw = raw[0]
    if isinstance(raw, bytes):
        raw = raw.decode()
    return raw


# A dimension may be symbolic (a name) or unknown (None). typing's Sequence: an alias is evaluated at run time, where
# collections.abc's cannot be subscripted before Python 3.9 (JetPack 5.1's Python is 3.8).
Shape = typing.Sequence[Union[int, str, None]]


def check_inputs(
    op_type: str, node_name: str, attrs: PluginAttrs, shapes: Sequence[Shape], dtypes: Sequence[str]
) -> None:
    """Ranks, dtypes, input counts and shared dimensions a plugin node accepts; dtypes are numpy names ("float32")."""
    where = f"{op_type} node '{node_name}'"
    if isinstance(attrs, MultilevelRoIAlignAttrs):
        if len(shapes) != 1 + attrs.num_levels:
            raise BadInput(
                f"{where}: expected rois and {attrs.num_levels} feature maps (levels {attrs.min_level}.."
                f"{attrs.max_level}), got {len(shapes)} inputs"
            )
        _expect(where, "rois", shapes[0], dtypes[0], rank=3, dtypes=("float32",), last_dim=4)
        for level, (shape, dtype) in enumerate(zip(shapes[1:], dtypes[1:]), start=attrs.min_level):
            _expect(where, f"feature map P{level}", shape, dtype, rank=4, dtypes=("float32", "float16"))
        if len(set(dtypes[1:])) > 1:
            raise BadInput(f"{where}: feature maps must share one dtype, got {', '.join(dtypes[1:])}")
        first_map = f"feature map P{attrs.min_level}"
        for level, shape in enumerate(shapes[1:], start=attrs.min_level):
            _same_dim(where, "B", "rois", shapes[0][0], f"feature map P{level}", shape[0])
            _same_dim(where, "C", first_map, shapes[1][1], f"feature map P{level}", shape[1])
        return
    assert isinstance(attrs, BatchedNMSAttrs)
    if len(shapes) != 2:
        raise BadInput(f"{where}: expected 2 inputs (boxes, scores), got {len(shapes)}")
    boxes_shape = shapes[0]
    if len(boxes_shape) not in (3, 4):
        raise BadInput(f"{where}: input 'boxes' must have rank 3 [B,N,4] or 4 [B,N,C,4], got rank {len(boxes_shape)}")
    _expect(where, "boxes", boxes_shape, dtypes[0], rank=len(boxes_shape), dtypes=("float32",), last_dim=4)
    _expect(where, "scores", shapes[1], dtypes[1], rank=3, dtypes=("float32",))
    _same_dim(where, "B", "scores", shapes[1][0], "boxes", boxes_shape[0])
    _same_dim(where, "N", "scores", shapes[1][1], "boxes", boxes_shape[1])
    num_classes = shapes[1][2]
    if len(boxes_shape) == 4 and _known(num_classes) and _known(boxes_shape[2]) and boxes_shape[2] != num_classes:
        raise BadInput(f"{where}: boxes have {boxes_shape[2]} classes but scores have {num_classes}")
    if isinstance(num_classes, int) and attrs.background_class >= num_classes:
        raise BadInput(
            f"{where}: attribute 'background_class' = {attrs.background_class} is out of range for {num_classes} classes"
        )


def _known(dim: int | str | None) -> bool:
    return isinstance(dim, int) and dim >= 0


def _same_dim(
    where: str, letter: str, name: str, dim: int | str | None, other_name: str, other_dim: int | str | None
) -> None:
    """Two inputs that share a dimension (B, N or C of the contract's shapes) must agree on it where both are known."""
    if _known(dim) and _known(other_dim) and dim != other_dim:
        raise BadInput(
            f"{where}: input '{other_name}' has {letter} = {other_dim} but input '{name}' has {letter} = {dim}"
        )


def _expect(
    where: str, name: str, shape: Shape, dtype: str, rank: int, dtypes: tuple[str, ...], last_dim: int | None = None
) -> None:
    if len(shape) != rank:
        raise BadInput(f"{where}: input '{name}' must have rank {rank}, got rank {len(shape)} {list(shape)}")
    if dtype not in dtypes:
        raise BadInput(f"{where}: input '{name}' must be {' or '.join(dtypes)}, got {dtype}")
    if last_dim is not None and _known(shape[-1]) and shape[-1] != last_dim:
        raise BadInput(f"{where}: input '{name}' must end in a dimension of {last_dim}, got {list(shape)}")
