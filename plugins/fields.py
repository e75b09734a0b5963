"""Plugin attributes as TensorRT plugin fields: one-element int32 or float32 arrays by name.

This is the form TensorRT's ONNX parser gives a creator for an INT or FLOAT node attribute, and the form the plugins
serialise themselves in; `contracts.read_attributes` reads it back.
"""

from __future__ import annotations

from dataclasses import Field, fields
from typing import Any

import numpy as np

from maskrt.contracts.plugins import ATTRS_BY_OP, PluginAttrs, is_int_field


def field_dtypes(op_type: str) -> dict[str, np.dtype]:
    """The fields a creator declares: every attribute of the op, int32 or float32."""
    return {field.name: _dtype(field) for field in fields(ATTRS_BY_OP[op_type])}


def field_arrays(attrs: PluginAttrs) -> dict[str, np.ndarray]:
    return {field.name: np.array([getattr(attrs, field.name)], dtype=_dtype(field)) for field in fields(type(attrs))}


def _dtype(field: Field[Any]) -> np.dtype:
    return np.dtype(np.int32 if is_int_field(field) else np.float32)
