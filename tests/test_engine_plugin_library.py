"""The runtime's engine loader (runtime/engine.py, TensorRTBackend) initialises TensorRT's own plugin library before it
deserializes an engine (issue 16, item 1).

A `--plugins native` engine holds ROIAlign_TRT, the plugin TensorRT's ONNX parser makes of an ONNX RoiAlign
(onnx-tensorrt's RoiAlign importer, 8.5-GA to 10.x), and deserializing it needs that plugin's creator in the registry.
libnvinfer_plugin registers it only when `trt.init_libnvinfer_plugins(logger, "")` is called: the ONNX parser of 8.5
and 8.6 calls initLibNvInferPlugins itself while parsing (ModelImporter.cpp, ENABLE_STD_PLUGIN), the parser of 10.x
does not, and a runtime that only deserializes never parses. Polygraphy's EngineFromBytes and EngineFromPath call it
before deserialize_cuda_engine (polygraphy/backend/trt/loader.py), and so does TensorRTBackend. The lean and dispatch
runtimes have no init_libnvinfer_plugins (pyPlugin.cpp binds it only with EXPORT_ALL_BINDINGS), so the call must be
guarded.

TensorRT's and pycuda's GPU objects cannot run here; they are stood in by recorders, around the real ILogger of
TensorRT 11.4's lean runtime, which the loader subclasses.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

tensorrt_lean = pytest.importorskip("tensorrt_lean")

from maskrt.contracts.records import engine_record_path  # noqa: E402
from maskrt.runtime import engine  # noqa: E402
from runtime_support import engine_record  # noqa: E402

GPU, CAPABILITY = "Orin", (8, 7)


def tensorrt_standin(version: str, calls: list[Any], full: bool) -> types.ModuleType:
    """A TensorRT whose Runtime records the deserialization (and finds no engine in the bytes); `full`: with
    init_libnvinfer_plugins, as the full TensorRT has it, else without, as the lean and dispatch runtimes."""
    module = types.ModuleType("tensorrt")
    module.__version__ = version  # type: ignore[attr-defined]
    module.ILogger = tensorrt_lean.ILogger  # type: ignore[attr-defined]

    class Runtime:
        def __init__(self, logger: Any) -> None:
            calls.append("Runtime")

        def deserialize_cuda_engine(self, data: bytes) -> None:
            calls.append("deserialize_cuda_engine")

    module.Runtime = Runtime  # type: ignore[attr-defined]
    if full:
        module.init_libnvinfer_plugins = lambda logger, namespace: calls.append(("init_libnvinfer_plugins", namespace))  # type: ignore[attr-defined]
    return module


def pycuda_standin() -> tuple[types.ModuleType, types.ModuleType]:
    driver = types.ModuleType("pycuda.driver")

    class Context:
        @staticmethod
        def pop() -> None:
            pass

        def push(self) -> None:
            pass

        def detach(self) -> None:
            pass

    class Device:
        def __init__(self, ordinal: int) -> None:
            pass

        def name(self) -> str:
            return GPU

        def compute_capability(self) -> tuple[int, int]:
            return CAPABILITY

        def retain_primary_context(self) -> Context:
            return Context()

    driver.Error = type("Error", (Exception,), {})  # type: ignore[attr-defined]
    driver.init = lambda: None  # type: ignore[attr-defined]
    driver.Device = Device  # type: ignore[attr-defined]
    driver.Context = Context  # type: ignore[attr-defined]
    package = types.ModuleType("pycuda")
    package.driver = driver  # type: ignore[attr-defined]
    return package, driver


@pytest.fixture
def native_engine(tmp_path: Path) -> Iterator[Path]:
    """A --plugins native engine's file (bytes TensorRT's stand-in never reads) with the record trt-convert writes."""
    path = tmp_path / "model.engine"
    path.write_bytes(b"\x00" * 64)
    yield path


def open_with(path: Path, version: str, full: bool, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []
    capability = "".join(map(str, CAPABILITY))
    record = engine_record(tensorrt_version=version, gpu=GPU, compute_capability=capability, engine_bytes=64)
    engine_record_path(path).write_text(json.dumps(record))
    package, driver = pycuda_standin()
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_standin(version, calls, full))
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    with pytest.raises(ValueError, match="TensorRT cannot read this engine"):
        engine.TensorRTBackend(path)
    assert "deserialize_cuda_engine" in calls
    return calls


@pytest.mark.parametrize("version", ["8.6.2", "10.3.0", "11.1.0"])
def test_the_engine_loader_initialises_tensorrts_plugins_before_it_deserializes(
    native_engine: Path, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = open_with(native_engine, version, full=True, monkeypatch=monkeypatch)
    assert ("init_libnvinfer_plugins", "") in calls
    assert calls.index(("init_libnvinfer_plugins", "")) < calls.index("deserialize_cuda_engine")


def test_a_runtime_without_the_plugin_library_still_deserializes(native_engine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lean and dispatch runtimes lack init_libnvinfer_plugins: the loader must not need it."""
    assert not hasattr(tensorrt_lean, "init_libnvinfer_plugins")
    calls = open_with(native_engine, "11.4.0", full=False, monkeypatch=monkeypatch)
    assert calls == ["Runtime", "deserialize_cuda_engine"]
