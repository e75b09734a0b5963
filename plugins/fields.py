"""Plugin attributes as TensorRT plugin fields: one-element int32 or float32 arrays by name.

This is the form TensorRT's ONNX parser gives a creator for an INT or FLOAT node attribute, and the form the plugins
serialise themselves in; `contracts.read_attributes` reads it back.
"""

from __future__ import annotations

from dataclasses import asdict, fields

import numpy as np

from maskrt.plugins.contracts import BATCHED_NMS, ROI_ALIGN, BatchedNMSAttrs, MultilevelRoIAlignAttrs, PluginAttrs

_ATTRS_BY_OP = {ROI_ALIGN: MultilevelRoIAlignAttrs, BATCHED_NMS: BatchedNMSAttrs}


def field_dtypes(op_type: str) -> dict[str, np.dtype]:
    """The fields a creator declares: every attribute of the op, int32 or float32."""
    return {
        field.name: np.dtype(np.int32 if field.type == "int" else np.float32) for field in fields(_ATTRS_BY_OP[op_type])
    }


def field_arrays(attrs: PluginAttrs) -> dict[str, np.ndarray]:
    op_type = ROI_ALIGN if isinstance(attrs, MultilevelRoIAlignAttrs) else BATCHED_NMS
    dtypes = field_dtypes(op_type)
    return {name: np.array([value], dtype=dtypes[name]) for name, value in asdict(attrs).items()}
