"""TensorRTBackend on a dynamic-batch engine, on each TensorRT generation's API: profile 0 selected on the stream,
buffers sized for the profile's maximum, each run's input shapes set and its outputs' shapes read back, only the
images given copied each way, and a batch outside the profile refused in one line.

TensorRT and pycuda cannot run here: both are stood in by recorders (as in test_engine_plugin_library.py) whose
engine computes each image's outputs from its own pixels, so that a batch mixed up with another shows. The calls are
NVIDIA's own, as its samples make them (samples/python/efficientdet/infer.py of 8.5.1, 8.6 and 10.x, and Polygraphy's
TrtRunner): TensorRT >= 10 get_tensor_profile_shape, set_input_shape and get_tensor_shape, whose names the real
binding classes of TensorRT 11.4's lean runtime are checked to have; TensorRT 8.x get_profile_shape,
set_binding_shape and get_binding_shape, by binding index.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tensorrt_lean = pytest.importorskip("tensorrt_lean")

from maskrt.runtime import engine  # noqa: E402

from test_engine_plugin_library import pycuda_standin  # noqa: E402

K, M, SIDE = 3, 2, 4  # detections per image, mask size, input side
PROFILE = (1, 2, 4)
DTYPES = {"images": np.float32, "image_sizes": np.int32, "num_detections": np.int32, "boxes": np.float32,
          "scores": np.float32, "classes": np.int32, "masks": np.float32}
SHAPES = {"images": (3, SIDE, SIDE), "image_sizes": (2,), "num_detections": (1,), "boxes": (K, 4), "scores": (K,),
          "classes": (K,), "masks": (K, M, M)}
NAMES = list(SHAPES)
IS_INPUT = {"images": True, "image_sizes": True}
# The methods of TensorRT >= 10's engine and context that the backend calls on a dynamic-batch engine.
ENGINE_10 = ("num_io_tensors", "get_tensor_name", "get_tensor_shape", "get_tensor_mode", "get_tensor_dtype",
             "get_tensor_profile_shape", "create_execution_context")
CONTEXT_10 = ("set_optimization_profile_async", "set_input_shape", "get_tensor_shape", "set_tensor_address", "execute_async_v3")


def test_the_calls_of_tensorrt_10_are_tensorrts() -> None:
    assert all(hasattr(tensorrt_lean.ICudaEngine, name) for name in ENGINE_10)
    assert all(hasattr(tensorrt_lean.IExecutionContext, name) for name in CONTEXT_10)


class Memory:
    """pycuda's device memory as host bytes, by address."""

    def __init__(self) -> None:
        self.blocks: dict[int, bytearray] = {}

    def alloc(self, size: int) -> int:
        address = 0x1000 * (len(self.blocks) + 1)
        self.blocks[address] = bytearray(size)
        return address

    def array(self, address: int, name: str, batch: int) -> np.ndarray:
        count = batch * int(np.prod(SHAPES[name]))
        return np.frombuffer(self.blocks[address], DTYPES[name], count).reshape(batch, *SHAPES[name])


class Allocation:
    def __init__(self, address: int) -> None:
        self.address = address

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        pass


def pycuda_with_memory(memory: Memory) -> tuple[types.ModuleType, types.ModuleType]:
    package, driver = pycuda_standin()

    def mem_alloc(size: int) -> Allocation:
        return Allocation(memory.alloc(size))

    def htod(dest: Allocation, src: np.ndarray, stream: Any = None) -> None:
        memory.blocks[int(dest)][: src.nbytes] = np.ascontiguousarray(src).tobytes()

    def dtoh(dest: np.ndarray, src: Allocation, stream: Any = None) -> None:
        dest[...] = np.frombuffer(bytes(memory.blocks[int(src)][: dest.nbytes]), dest.dtype).reshape(dest.shape)

    class Stream:
        handle = 7

        def synchronize(self) -> None:
            pass

    class Event:
        def record(self, stream: Any = None) -> Any:
            return self

        def synchronize(self) -> Any:
            return self

        def time_since(self, other: Any) -> float:
            return 0.0

    driver.mem_alloc = mem_alloc  # type: ignore[attr-defined]
    driver.pagelocked_empty = lambda shape, dtype: np.zeros(shape, dtype)  # type: ignore[attr-defined]
    driver.memcpy_htod_async, driver.memcpy_dtoh_async = htod, dtoh  # type: ignore[attr-defined]
    driver.Stream, driver.Event = Stream, Event  # type: ignore[attr-defined]
    return package, driver


class Context:
    """An execution context whose run writes, for each image b, outputs made from images[b, 0, 0, 0]."""

    def __init__(self, memory: Memory, calls: list[Any]) -> None:
        self.memory, self.calls = memory, calls
        self.batch: int | None = None
        self.addresses: dict[str, int] = {}

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        self.calls.append(("profile", index, stream))
        return True

    def _set(self, name: str, shape: tuple[int, ...]) -> bool:
        self.calls.append(("shape", name, tuple(shape)))
        if not PROFILE[0] <= shape[0] <= PROFILE[2] or tuple(shape[1:]) != SHAPES[name]:
            return False
        self.batch = shape[0]
        return True

    def _shape(self, name: str) -> tuple[int, ...]:
        return (-1 if self.batch is None else self.batch, *SHAPES[name])

    def _run(self) -> bool:
        assert self.batch is not None
        self.calls.append(("run", self.batch))
        seeds = self.memory.array(self.addresses["images"], "images", self.batch)[:, 0, 0, 0]
        for name in NAMES[2:]:
            out = self.memory.array(self.addresses[name], name, self.batch)
            out[...] = seeds.reshape(-1, *[1] * len(SHAPES[name])).astype(out.dtype)
        return True

    # TensorRT >= 10
    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        return self._set(name, shape)

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._shape(name)

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        return self._run()

    # TensorRT 8.x, by binding index
    def set_binding_shape(self, index: int, shape: tuple[int, ...]) -> bool:
        return self._set(NAMES[index], shape)

    def get_binding_shape(self, index: int) -> tuple[int, ...]:
        return self._shape(NAMES[index])

    def execute_async_v2(self, bindings: list[int], stream: int) -> bool:
        self.addresses = dict(zip(NAMES, bindings))
        return self._run()


class Engine:
    def __init__(self, memory: Memory, calls: list[Any]) -> None:
        self.memory, self.calls = memory, calls
        self.num_io_tensors = self.num_bindings = len(NAMES)

    def create_execution_context(self) -> Context:
        return Context(self.memory, self.calls)

    def _profile(self, name: str) -> list[tuple[int, ...]]:
        return [(batch, *SHAPES[name]) for batch in PROFILE]

    # TensorRT >= 10
    def get_tensor_name(self, index: int) -> str:
        return NAMES[index]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, *SHAPES[name])

    def get_tensor_mode(self, name: str) -> str:
        return "input" if IS_INPUT.get(name) else "output"

    def get_tensor_dtype(self, name: str) -> Any:
        return DTYPES[name]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        assert profile == 0
        return self._profile(name)

    # TensorRT 8.x
    def get_binding_name(self, index: int) -> str:
        return NAMES[index]

    def binding_is_input(self, index: int) -> bool:
        return bool(IS_INPUT.get(NAMES[index]))

    def get_binding_shape(self, index: int) -> tuple[int, ...]:
        return (-1, *SHAPES[NAMES[index]])

    def get_binding_dtype(self, index: int) -> Any:
        return DTYPES[NAMES[index]]

    def get_profile_shape(self, profile: int, index: int) -> list[tuple[int, ...]]:
        assert profile == 0
        return self._profile(NAMES[index])


def tensorrt_with_engine(version: str, memory: Memory, calls: list[Any]) -> types.ModuleType:
    module = types.ModuleType("tensorrt")
    module.__version__ = version  # type: ignore[attr-defined]
    module.ILogger = tensorrt_lean.ILogger  # type: ignore[attr-defined]
    module.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")  # type: ignore[attr-defined]
    module.nptype = lambda dtype: dtype  # type: ignore[attr-defined]
    module.DataType = type("DataType", (), {})  # type: ignore[attr-defined]

    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine:
            return Engine(memory, calls)

    module.Runtime = Runtime  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize("version", ["8.6.2", "10.3.0"])
def test_a_dynamic_batch_engine_runs_each_batch_in_its_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    memory, calls = Memory(), []
    package, driver = pycuda_with_memory(memory)
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_with_engine(version, memory, calls))
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    path = tmp_path / "model.engine"
    path.write_bytes(b"\x00" * 64)
    backend = engine.TensorRTBackend(path)  # no model.engine.json: what the engine says
    assert backend.batch_range == PROFILE
    assert (backend.info.batch, backend.info.dynamic_batch, backend.info.input_size) == (4, True, (SIDE, SIDE))
    assert calls[0] == ("profile", 0, 7)
    assert {call[1:] for call in calls[1:]} == {("images", (4, 3, SIDE, SIDE)), ("image_sizes", (4, 2))}  # buffers for 4
    assert all(len(block) == 4 * np.prod(SHAPES[name]) * np.dtype(DTYPES[name]).itemsize
               for name, block in zip(NAMES, memory.blocks.values()))
    for batch in (1, 3, 2, 4):
        calls.clear()
        images = np.zeros((batch, 3, SIDE, SIDE), np.float32)
        images[:, 0, 0, 0] = np.arange(10, 10 + batch)
        got = backend.run({"images": images, "image_sizes": np.full((batch, 2), SIDE, np.int32)})
        assert ("shape", "images", (batch, 3, SIDE, SIDE)) in calls and ("run", batch) in calls
        for name in NAMES[2:]:
            assert got[name].shape == (batch, *SHAPES[name])
            assert (got[name].reshape(batch, -1) == np.arange(10, 10 + batch)[:, None]).all(), name
    five = {"images": np.zeros((5, 3, SIDE, SIDE), np.float32), "image_sizes": np.full((5, 2), SIDE, np.int32)}
    with pytest.raises(ValueError, match=r"a batch of 5 images; the engine runs 1 to 4 \(its optimization profile\)"):
        backend.run(five)
    with pytest.raises(ValueError, match=r"image_sizes must be \[4, 2\], got \[2, 3\]"):
        backend.run({"images": images, "image_sizes": np.zeros((2, 3), np.int32)})
