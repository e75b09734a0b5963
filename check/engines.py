"""TensorRT engines in `maskrt check`: Polygraphy's TrtRunner, with maskrt's plugins registered for a plugin-mode
engine. The one module of check/ that touches TensorRT: it imports it when asked for an engine, and says what to
install when it is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maskrt.contracts.errors import TensorRTUnavailable


def trt_runner(path: Path, plugins: str, name: str) -> Any:
    """A Polygraphy TrtRunner for the engine at `path` (loaded when the runner is activated)."""
    try:
        import tensorrt as trt

        trt.Runtime  # noqa: B018  (tensorrt-stubs alone imports as an empty namespace package)
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    except (ImportError, AttributeError):
        raise TensorRTUnavailable(
            f"{path}: running an engine needs TensorRT and an NVIDIA GPU: JetPack ships TensorRT on a Jetson; on x86, "
            "pip install 'maskrt[tensorrt]'"
        ) from None
    if plugins == "maskrt":
        from maskrt.plugins import register

        register()
    return TrtRunner(EngineFromBytes(BytesFromPath(str(path))), name=name)
