"""The CUDA sources of both plugins and of the GPU mask paste compiled for CPU threads (tests/kernels_on_cpu), run
through the launches the GPU gets, on NumPy memory by address."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maskrt.plugins import launch
from maskrt.runtime import gpu_paste

HARNESS = Path(__file__).resolve().parent / "kernels_on_cpu"
KERNELS = Path(__file__).resolve().parents[1] / "plugins" / "kernels"

Runner = Callable[[Sequence[launch.Launch]], None]


def build_harness(directory: Path) -> Runner:
    """The harness compiled into `directory`; runs launches on the CPU. Skips the test where g++ is missing."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is needed to build the CPU harness")
    library = directory / "launch_on_cpu.so"
    subprocess.run(
        [compiler, "-std=c++20", "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-pthread", "-x", "c++",
         "-I", str(KERNELS), str(HARNESS / "launch_on_cpu.cpp"), "-o", str(library)],
        check=True,
    )
    harness = ctypes.CDLL(str(library))
    harness.maskrt_cpu_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p]

    def run(launches: Sequence[launch.Launch]) -> None:
        for item in launches:
            pointers = (ctypes.c_void_p * len(item.args))(*[ctypes.addressof(arg) for arg in item.args])
            status = harness.maskrt_cpu_launch(item.kernel.encode(), item.grid[0], item.grid[1], item.block, pointers)
            assert status == 0, f"the harness does not know {item.kernel}"

    return run


class HarnessDevice:
    """maskrt.runtime.kernel_checks' Device on the CPU: buffers are NumPy arrays held here, addressed as the GPU's are."""

    def __init__(self, run: Runner) -> None:
        self._run = run
        self._held: list[np.ndarray] = []

    def upload(self, array: np.ndarray) -> int:
        copy = np.array(array, copy=True, order="C")
        self._held.append(copy)
        return int(copy.ctypes.data)

    def download(self, address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.frombuffer(ctypes.string_at(address, size), dtype).reshape(shape).copy()

    def run(self, launches: Sequence[launch.Launch]) -> None:
        self._run(launches)

    def paste(self, masks: int, mask_size: int, rows: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        count = len(rows)
        output = np.zeros((count, *image_size), np.uint8)
        rows32, boxes32 = np.ascontiguousarray(rows, np.int32), np.ascontiguousarray(boxes, np.float32)
        self._run(
            gpu_paste.paste_launch(
                masks, rows32.ctypes.data, boxes32.ctypes.data, output.ctypes.data,
                count=count, mask_size=mask_size, image_size=image_size, threshold=0.5,
            )
        )
        return output.astype(bool)
