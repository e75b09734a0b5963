"""TensorRT engines in `maskrt check`: opened by the runtime's TensorRTBackend (pycuda), as the Predictor, `maskrt
infer` and `maskrt bench` open them. The one module of check/ that touches TensorRT: the backend imports it when an
engine is opened, and this module says what to install when it is missing."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from maskrt.runtime.engine import TensorRTBackend


def open_engine(path: Path, console: Console | None = None) -> TensorRTBackend:
    """The engine at `path` on the runtime's TensorRTBackend; TensorRTUnavailable (the backend's) when this machine
    lacks TensorRT, pycuda or a GPU to run it, so that the check goes on without it."""
    return TensorRTBackend(path, console=console)
