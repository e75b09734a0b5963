"""Each record is written once and read back through every stage that consumes it (surgery → precision → build →
runtime → check → serve), a record written without its optional fields included: every reader sees the same values.
And a record that cannot be read is refused in one line naming its file and field."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import onnx
import pytest

from maskrt.check.runners import onnx_backend
from maskrt.cli.main import main as maskrt
from maskrt.contracts.errors import BadInput
from maskrt.contracts.records import (
    DEPLOY_KEY,
    DeployRecord,
    engine_record_path,
    read_deploy_record,
    read_engine_record,
    read_metadata,
    read_precision_record,
    write_metadata,
)
from maskrt.runtime import engine
from maskrt.runtime.backends import ModelInfo, OnnxRuntimeBackend
from maskrt.serve.triton_repository import describe_model

OPTIONAL = [f.name for f in fields(DeployRecord) if f.name in ("single_input", "format")]
# The DeployRecord's fields that the runtime's ModelInfo carries.
DESCRIBED = ("batch", "input_size", "image_mean", "image_std", "num_classes", "class_names", "mask_size", "plugins")


@pytest.fixture(scope="module")
def sparse_deploy(shapes_demo_deploy: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """shapes-demo's native deploy graph whose record was written without its optional fields."""
    model = onnx.load(shapes_demo_deploy("native"))
    written = read_metadata(model, DEPLOY_KEY)
    assert set(OPTIONAL) <= set(written)
    write_metadata(model, DEPLOY_KEY, {key: value for key, value in written.items() if key not in OPTIONAL})
    path = tmp_path_factory.mktemp("records") / "deploy.onnx"
    onnx.save(model, path)
    return path


def described(info: ModelInfo) -> dict[str, object]:
    """What a reader's ModelInfo says of the model, in the DeployRecord's terms."""
    return {key: getattr(info, key) for key in DESCRIBED}


def recorded(record: DeployRecord) -> dict[str, object]:
    return {key: getattr(record, key) for key in DESCRIBED}


def test_every_reader_of_a_deploy_graph_sees_the_record_surgery_wrote(sparse_deploy: Path, tmp_path: Path) -> None:
    record = read_deploy_record(onnx.load(sparse_deploy))
    assert record is not None and record.single_input is False  # the default of the field left out
    expected = recorded(record)
    runtime = OnnxRuntimeBackend(sparse_deploy)
    check = onnx_backend(sparse_deploy, "deploy.onnx")
    serve = describe_model(sparse_deploy)
    for info in (runtime.info, serve.info):
        assert described(info) == expected and info.precision == "fp32" and info.single_input is False
    assert (check.feed_shape.batch, check.feed_shape.input_size, check.feed_shape.image_mean) == (
        record.batch,
        record.input_size,
        record.image_mean,
    )
    assert (check.precision, check.plugins) == ("fp32", record.plugins)

    # The precision step keeps the deploy record as it was written, and adds its own.
    fp16 = tmp_path / "model.fp16.onnx"
    assert maskrt(["convert", str(sparse_deploy), "--precision", "fp16", "--onnx-only", "-o", str(fp16)]) == 0
    graph = onnx.load(fp16)
    assert read_deploy_record(graph) == record
    made = read_precision_record(graph)
    assert made is not None and made.precision == "fp16"
    assert made.deploy_sha256 == hashlib.sha256(sparse_deploy.read_bytes()).hexdigest()
    for info in (OnnxRuntimeBackend(fp16).info, describe_model(fp16).info):
        assert described(info) == expected and info.precision == "fp16"
    assert onnx_backend(fp16, "model.fp16.onnx").precision == "fp16"


def test_every_reader_of_an_engine_record_sees_what_the_build_wrote(sparse_deploy: Path, tmp_path: Path) -> None:
    """model.engine.json as trt-convert writes it (flat, the deploy record's fields among the engine's), without the
    optional fields: the runtime's and the repository writer's readers agree with the deploy record."""
    deploy = read_metadata(onnx.load(sparse_deploy), DEPLOY_KEY)
    path = tmp_path / "model.engine"
    path.write_bytes(b"\x00" * 64)
    built = {"tensorrt_version": "10.3.0.30", "gpu": "Orin", "compute_capability": "87", "precision": "int8"}
    engine_record_path(path).write_text(json.dumps({**built, **deploy}))
    record = read_engine_record(path)
    assert record is not None and record.deploy == read_deploy_record(onnx.load(sparse_deploy))
    assert (record.engine_bytes, record.maskrt_version, record.onnx_sha256, record.deploy_sha256) == (None, None, None, None)
    here = engine.Machine("10.3.0.30", "Orin", "87")
    assert engine.check_record(path, record, here) == []
    assert engine.rebuild_command(path, record).endswith(f"--precision int8 --plugins native --calib-images <images folder> -o {path}")
    info = describe_model(path).info
    assert described(info) == recorded(record.deploy)
    assert info.precision == "int8"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"batch": "one"}, "'batch' is \"one\", not a whole number"),
        ({"input_size": [128]}, "'input_size' is [128], not two whole numbers"),
        ({"settings": {"box_nms_thresh": "high"}}, "'settings': 'box_nms_thresh' is \"high\", not a number"),
        ({"format": 99}, "written by a newer maskrt (record format 99"),
    ],
)
def test_a_record_that_cannot_be_read_is_refused_naming_the_file_and_field(
    sparse_deploy: Path, tmp_path: Path, change: dict[str, object], says: str
) -> None:
    model = onnx.load(sparse_deploy)
    write_metadata(model, DEPLOY_KEY, {**read_metadata(model, DEPLOY_KEY), **change})
    path = tmp_path / "deploy.onnx"
    onnx.save(model, path)
    with pytest.raises(BadInput) as refused:
        OnnxRuntimeBackend(path)
    assert str(refused.value).startswith(f"{path}: ") and says in str(refused.value), refused.value
    assert "\n" not in str(refused.value)
