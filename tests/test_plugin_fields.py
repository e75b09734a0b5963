"""What a plugin creator receives from TensorRT's ONNX parser (one-element int32/float32 arrays, bytes for string
attributes) becomes the plugin's attributes through contracts.read_attributes, or a clear error naming the node and
the attribute. TensorRT itself is not needed: these are the plain dicts the creator builds from its field collection."""

from __future__ import annotations

import numpy as np
import pytest

from maskrt.contracts.plugins import BATCHED_NMS, ROI_ALIGN, BatchedNMSAttrs, MultilevelRoIAlignAttrs, read_attributes
from maskrt.plugins.fields import field_arrays, field_dtypes


@pytest.mark.parametrize(
    "attrs",
    [
        MultilevelRoIAlignAttrs(output_size=14, sampling_ratio=0, aligned=1, min_level=3, max_level=6),
        BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.05, max_output=100, background_class=0),
    ],
)
def test_serialised_fields_read_back_as_the_same_attributes(attrs: MultilevelRoIAlignAttrs | BatchedNMSAttrs) -> None:
    op_type = ROI_ALIGN if isinstance(attrs, MultilevelRoIAlignAttrs) else BATCHED_NMS
    arrays = field_arrays(attrs)
    assert all(array.shape == (1,) and array.dtype in (np.int32, np.float32) for array in arrays.values())
    assert set(arrays) == set(field_dtypes(op_type))
    back = read_attributes(op_type, "node", arrays)
    for name, value in vars(attrs).items():
        assert getattr(back, name) == pytest.approx(value, rel=1e-7), name


def _parser_fields(**values: object) -> dict[str, object]:
    """As the ONNX parser passes them: ints as int32 arrays, floats as float32 arrays, strings as NUL-ended bytes."""
    fields: dict[str, object] = {}
    for name, value in values.items():
        if isinstance(value, str):
            fields[name] = np.frombuffer(value.encode() + b"\0", dtype=np.uint8).tobytes()
        else:
            fields[name] = np.array([value], dtype=np.int32 if isinstance(value, int) else np.float32)
    return fields


def test_parser_fields_with_defaults_left_out() -> None:
    attrs = read_attributes(ROI_ALIGN, "pool", _parser_fields(output_size=7, sampling_ratio=2, aligned=0))
    assert attrs == MultilevelRoIAlignAttrs(output_size=7, sampling_ratio=2, aligned=0)


@pytest.mark.parametrize(
    ("op_type", "fields", "message"),
    [
        (ROI_ALIGN, _parser_fields(sampling_ratio=2, aligned=0), "MultilevelRoIAlign node 'n': attribute 'output_size' is missing"),
        (ROI_ALIGN, _parser_fields(output_size=0, sampling_ratio=2, aligned=0), "attribute 'output_size' = 0 is out of range"),
        (ROI_ALIGN, _parser_fields(output_size=7, sampling_ratio=2, aligned=2), "attribute 'aligned' = 2 is out of range"),
        (ROI_ALIGN, _parser_fields(output_size=7.5, sampling_ratio=2, aligned=0), "attribute 'output_size' must be an integer"),
        (ROI_ALIGN, _parser_fields(output_size=7, sampling_ratio=2, aligned=0, min_level=5, max_level=3), "'max_level' = 3 is below"),
        (BATCHED_NMS, _parser_fields(iou_threshold=0.5, score_threshold=0.0), "BatchedNMS node 'n': attribute 'max_output' is missing"),
        (BATCHED_NMS, _parser_fields(iou_threshold=1.5, score_threshold=0.0, max_output=10), "attribute 'iou_threshold' = 1.5 is out of range"),
        (BATCHED_NMS, _parser_fields(iou_threshold=0.5, score_threshold=0.0, max_output=100000), "attribute 'max_output' = 100000 is out of range"),
        (BATCHED_NMS, _parser_fields(iou_threshold="high", score_threshold=0.0, max_output=10), "attribute 'iou_threshold' must be a number"),
    ],
)
def test_bad_fields_name_the_node_and_the_attribute(op_type: str, fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        read_attributes(op_type, "n", fields)
