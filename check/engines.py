"""TensorRT engines in `maskrt check`: opened by the runtime's TensorRTBackend (pycuda), as the Predictor, `maskrt
infer` and `maskrt bench` open them. The one module of check/ that touches TensorRT: the backend imports it when an
engine is opened, and this module says what to install when it is missing."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from maskrt.contracts.errors import TensorRTUnavailable
from maskrt.runtime.engine import TensorRTBackend, missing_gpu_stack


def open_engine(path: Path, console: Console | None = None) -> TensorRTBackend:
    """The engine at `path` on the runtime's TensorRTBackend; TensorRTUnavailable when this machine lacks TensorRT or
    pycuda to run it, so that the check goes on without it."""
    missing = missing_gpu_stack(path)
    if missing is not None:
        raise TensorRTUnavailable(missing)
    return TensorRTBackend(path, console=console)
