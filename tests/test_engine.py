"""Opening a TensorRT engine on a machine without TensorRT or a GPU: what model.engine.json says against what the
machine has, in one sentence; a missing record, a damaged record or a truncated engine, refused (or warned about)
before TensorRT is asked anything; and runtime/engine.py importable on the edge install."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx
import pytest
from rich.console import Console

from maskrt.cli.main import main as maskrt
from maskrt.contracts.errors import BadInput, TensorRTUnavailable
from maskrt.contracts.plugins import PLUGIN_NAMESPACE, PLUGIN_VERSION
from maskrt.contracts.records import (
    DEPLOY_KEY,
    EngineRecord,
    engine_record_path,
    read_deploy_record,
    read_engine_record,
    read_metadata,
)
from maskrt.runtime import engine
from maskrt.runtime.backends import ModelInfo

HERE = engine.Machine(tensorrt_version="10.3.0.30", gpu="Orin", compute_capability="87")


@pytest.fixture(scope="module")
def deploy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """shapes-demo's deploy graph (plugin mode) as `trt-convert` leaves it beside model.engine."""
    folder = tmp_path_factory.mktemp("engine")
    exported = folder / "model.onnx"
    assert maskrt(["export", "--model", "shapes-demo", "-o", str(exported)]) == 0
    assert maskrt(["convert", str(exported), "--surgery-only", "-o", str(folder / "model.deploy.onnx")]) == 0
    return folder / "model.deploy.onnx"


def write_engine(deploy: Path, machine: engine.Machine, data: bytes = b"\x00" * 64, precision: str = "fp16") -> Path:
    """model.engine (bytes that stand in for TensorRT's) and model.engine.json with the fields convert/build.py
    writes for a build on `machine`."""
    deploy_bytes = deploy.read_bytes()
    record: dict[str, Any] = read_metadata(onnx.load_from_string(deploy_bytes), DEPLOY_KEY)
    path = deploy.with_name("model.engine")
    fields = {
        "tensorrt_version": machine.tensorrt_version,
        "gpu": machine.gpu,
        "compute_capability": machine.compute_capability,
        "precision": precision,
        **{k: record[k] for k in ("plugins", "plugin_namespace", "plugin_version", "batch", "input_size")},
        **{k: record[k] for k in ("image_mean", "image_std", "num_classes", "class_names", "mask_size", "settings")},
        "source_sha256": record["source_sha256"],
        "deploy_sha256": hashlib.sha256(deploy_bytes).hexdigest(),
        "engine_bytes": len(data),
    }
    engine_record_path(path).write_text(json.dumps(fields, indent=2))
    path.write_bytes(data)
    return path


def test_a_record_from_this_machine_passes_and_describes_the_model(deploy: Path) -> None:
    path = write_engine(deploy, HERE)
    record = read_engine_record(path)
    assert record is not None
    assert engine.check_record(path, record, HERE) == []
    info = ModelInfo.of(record.deploy, record.precision, record.deploy.single_input)
    assert info.input_size == (128, 128) and info.batch == 1 and info.mask_size == 28
    assert info.class_names[1:] == ("circle", "square", "triangle")
    assert info.plugins == "maskrt" and info.precision == "fp16"
    assert record.deploy.plugin_namespace == PLUGIN_NAMESPACE and record.deploy.plugin_version == PLUGIN_VERSION


@pytest.mark.parametrize(
    "built, named",
    [
        (engine.Machine("10.13.0.35", "Orin", "87"), ["TensorRT 10.13.0.35", "TensorRT 10.3.0.30"]),
        (engine.Machine("10.3.0.30", "NVIDIA GeForce RTX 4090", "89"), ["NVIDIA GeForce RTX 4090 (sm_89)", "Orin (sm_87)"]),
        (engine.Machine("8.6.2", "Xavier", "72"), ["TensorRT 8.6.2 and Xavier (sm_72)", "TensorRT 10.3.0.30 and Orin (sm_87)"]),
    ],
    ids=["tensorrt", "gpu", "both"],
)
def test_an_engine_built_elsewhere_is_refused_in_one_sentence(deploy: Path, built: engine.Machine, named: list[str]) -> None:
    path = write_engine(deploy, built)
    with pytest.raises(ValueError) as error:
        engine.check_record(path, recorded(path), HERE)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: built for {named[0]}, but this machine has {named[1]};")
    # The deploy graph trt-convert left beside the engine rebuilds it with the same settings.
    assert message.endswith(f"rebuild it here: trt-convert {deploy} --precision fp16 -o {path}")


def test_another_plugin_version_needs_surgery_again(deploy: Path) -> None:
    path = write_engine(deploy, HERE)
    newer = engine.Machine(HERE.tensorrt_version, HERE.gpu, HERE.compute_capability, plugin_version="2")
    with pytest.raises(ValueError) as error:
        engine.check_record(path, recorded(path), newer)
    message = str(error.value)
    assert f"built for maskrt plugins {PLUGIN_NAMESPACE} version {PLUGIN_VERSION}" in message
    assert "this machine has maskrt plugins maskrt version 2" in message
    # The deploy graph holds plugin nodes of the old version: the rebuild starts from the source ONNX.
    assert message.endswith(f"trt-convert <source onnx> --precision fp16 -o {path}") and "\n" not in message


def test_another_gpu_of_the_same_architecture_is_a_warning(deploy: Path) -> None:
    path = write_engine(deploy, engine.Machine(HERE.tensorrt_version, "Jetson AGX Orin", "87"))
    (warning,) = engine.check_record(path, recorded(path), HERE)
    assert warning.startswith(f"{path}: built on Jetson AGX Orin, running on Orin (both sm_87);")
    assert "\n" not in warning


def recorded(path: Path) -> EngineRecord:
    record = read_engine_record(path)
    assert record is not None
    return record


def test_the_rebuild_command_carries_the_flags_of_the_record(deploy: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.engine"  # no deploy graph beside it
    model = read_deploy_record(onnx.load(deploy))
    assert model is not None
    record = EngineRecord(replace(model, plugins="native", single_input=True), "10.3.0.30", "Orin", "87", precision="int8")
    assert engine.rebuild_command(path, record) == (
        f"trt-convert <source onnx> --precision int8 --plugins native --single-input --calib-images <images folder> -o {path}"
    )


def open_engine(path: Path) -> tuple[str, str]:
    """TensorRTBackend(path) on this machine (no TensorRT): what it printed, and the one line it was refused with (a
    bad engine or record, exit code 2; TensorRT missing, exit code 3)."""
    output = io.StringIO()
    console = Console(file=output, markup=False, highlight=False, width=10_000)
    with pytest.raises((BadInput, TensorRTUnavailable)) as error:
        engine.TensorRTBackend(path, console=console)
    assert "\n" not in str(error.value)
    return output.getvalue(), str(error.value)


def test_a_missing_record_is_a_warning_and_the_run_goes_on(deploy: Path) -> None:
    path = write_engine(deploy, HERE)
    engine_record_path(path).unlink()
    printed, refused = open_engine(path)
    assert printed.startswith(f"{engine_record_path(path)}: not found; running model.engine without checking") and printed.count("\n") == 1
    # It went on as far as this machine allows: to TensorRT, which is not installed here.
    assert refused == f"{path}: running a TensorRT engine needs TensorRT, which is not installed here: {engine.INSTALL_HINT}"
    assert "pip install 'maskrt[tensorrt]'" in refused


def test_a_truncated_engine_is_refused_before_tensorrt_is_asked(deploy: Path) -> None:
    path = write_engine(deploy, HERE, data=b"\x07" * 1000)
    path.write_bytes(path.read_bytes()[:600])
    printed, refused = open_engine(path)
    assert printed == ""
    assert refused.startswith(f"{path}: truncated (600 bytes, model.engine.json says 1000);")


def test_an_empty_engine_is_refused(deploy: Path) -> None:
    path = write_engine(deploy, HERE)
    path.write_bytes(b"")
    assert open_engine(path)[1] == f"{path}: is empty, not a TensorRT engine"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{ not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"gpu": "Orin"}', "not an engine record written by trt-convert (no tensorrt_version, compute_capability"),
    ],
)
def test_a_damaged_record_is_refused(deploy: Path, text: str, expected: str) -> None:
    path = write_engine(deploy, HERE)
    engine_record_path(path).write_text(text)
    refused = open_engine(path)[1]
    assert refused.startswith(f"{engine_record_path(path)}: {expected}")


def test_the_engine_runtime_imports_without_torch_tensorrt_or_pycuda() -> None:
    """The edge install: runtime/engine.py and runtime/gpu_paste.py import with none of these importable; TensorRT,
    pycuda and cuda-python load only when an engine is opened."""
    blocked = ["torch", "torchvision", "onnx_graphsurgeon", "tensorrt", "pycuda", "cuda"]
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import maskrt.runtime.engine, maskrt.runtime.gpu_paste
loaded = sorted(name for name in sys.modules if name.split(".")[0] in {blocked!r})
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", script], check=True)
