"""cuda-python's results, checked in one place: the driver API (`cuda.bindings.driver`), NVRTC (`cuda.bindings.nvrtc`)
and the runtime API (`cuda.bindings.runtime`).

Every cuda-python call returns a tuple: its status (CUresult, nvrtcResult or cudaError_t) and then its values, if any.
`check_cuda` reads it as the `checkCudaErrors` of NVIDIA's cuda-python examples does (a non-zero status is an error,
named by cuGetErrorName, nvrtcGetErrorString or cudaGetErrorName; otherwise nothing, the value, or the values), and
raises CudaError saying what was being done. A call whose library cannot be loaded (no NVIDIA driver, no NVRTC) does
not return at all: cuda-python raises a RuntimeError (cuda.pathfinder's DynamicLibNotFoundError from 12.9 on, "Failed
to dlopen ..." before), which `loading` turns into CudaError naming the library and what installs it.

Importing this module needs only the standard library; cuda-python is imported when a status is named.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

# Where TensorRT, pycuda and cuda-python come from: JetPack's own TensorRT on a Jetson (PyPI's must not replace it), and
# cuda-python of the CUDA major version of the driver (JetPack 6 is CUDA 12; cuda-bindings 13 needs a CUDA 13 driver).
INSTALL_HINT = (
    "on a Jetson TensorRT comes with JetPack: pip install pycuda 'cuda-bindings>=12.6,<13' there (pycuda alone on "
    "JetPack 5.1's Python 3.8, which cuda-bindings does not support); on x86, pip install 'maskrt[tensorrt]'"
)
# What provides NVRTC, which compiles the kernels where nvcc is missing.
NVRTC_HINT = "pip install 'nvidia-cuda-nvrtc-cu12>=12.6,<13' (or put nvcc, the CUDA toolkit, on PATH)"


class CudaError(RuntimeError):
    """A CUDA driver, runtime or NVRTC call failed, or its library could not be loaded."""


def check_cuda(result: tuple[Any, ...], what: str) -> Any:
    """The values of a cuda-python call: None for none, the value for one, the tuple of them for several.

    `result` is exactly what the call returned, `(status, *values)`. Raises CudaError("<what>: <error name>") when
    the status is not success, and TypeError when `result` is not such a tuple (a status wrapped in another tuple
    would otherwise read as a failure whatever the call did)."""
    if not isinstance(result, tuple) or not result or not _is_status(result[0]):
        raise TypeError(f"{what}: check_cuda takes a cuda-python call's result, (status, *values); got {result!r}")
    status, values = result[0], result[1:]
    if status.value:
        raise CudaError(f"{what}: {error_name(status)} (error {status.value})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def error_name(status: Any) -> str:
    """CUDA's name for a status, as NVIDIA's examples ask for it; the enum's own name when CUDA cannot say (a driver
    library that failed to load cannot name its errors)."""
    own = str(getattr(status, "name", status))
    try:
        kind = type(status).__name__
        if kind == "CUresult":
            from cuda.bindings import driver

            success = driver.CUresult.CUDA_SUCCESS
            return _named(driver.cuGetErrorName(status), driver.cuGetErrorString(status), success) or own
        if kind == "nvrtcResult":
            from cuda.bindings import nvrtc

            return _named(nvrtc.nvrtcGetErrorString(status), None, nvrtc.nvrtcResult.NVRTC_SUCCESS) or own
        if kind == "cudaError_t":
            from cuda.bindings import runtime

            success = runtime.cudaError_t.cudaSuccess
            return _named(runtime.cudaGetErrorName(status), runtime.cudaGetErrorString(status), success) or own
    except (ImportError, RuntimeError):  # no cuda-python, or its library cannot be loaded to name the error
        return own
    return own


def _named(name: tuple[Any, bytes], text: tuple[Any, bytes] | None, success: Any) -> str | None:
    """"NAME: description" from the results of a library's name and description calls; None when it cannot name it."""
    if name[0] != success:
        return None
    described = f": {text[1].decode()}" if text is not None and text[0] == success and text[1] else ""
    return str(name[1].decode()) + described


@contextlib.contextmanager
def loading(library: str, hint: str) -> Iterator[None]:
    """Around the first cuda-python call into `library` ("the NVIDIA driver (libcuda)", "NVRTC"): cuda-python's
    failure to load it (a RuntimeError that is not a CudaError) becomes CudaError naming it and `hint`."""
    try:
        yield
    except CudaError:
        raise
    except RuntimeError as error:
        raise CudaError(f"{library} could not be loaded ({type(error).__name__}: {error}); {hint}") from None


def _is_status(value: Any) -> bool:
    """A cuda-python status: an int-valued enum of one of its status types (CUresult, nvrtcResult, cudaError_t...)."""
    return isinstance(value, int) and hasattr(value, "value") and hasattr(value, "name") and not isinstance(value, bool)
