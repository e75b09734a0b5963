"""maskrt's custom TensorRT plugins (docs/design.md, "Plugins"): CUDA kernels and their build, the TensorRT glue, the
CPU reference and the ONNX Runtime custom ops built on it. Their node contract is contracts/plugins.py."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    import onnx
    import onnxruntime


def register() -> None:
    """Register the MultilevelRoIAlign and BatchedNMS creators (namespace "maskrt") with TensorRT's plugin registry,
    so that TensorRT's ONNX parser and engine deserialisation find them. Calling it again does nothing."""
    try:
        from maskrt.plugins.tensorrt_plugins import register_creators
    except ImportError as error:
        raise ImportError(
            f"maskrt's TensorRT plugins need TensorRT >= 10 and cuda-python: pip install 'maskrt[tensorrt]' ({error})"
        ) from error
    register_creators()


def cpu_session(path_or_model: Union[str, os.PathLike[str], onnx.ModelProto]) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session for a deploy graph of either surgery mode; plugin nodes run on the CPU reference.

    Raises ValueError naming the node and the attribute or input when a plugin node breaks its contract.
    """
    # ONNX Runtime and its extensions load only when a session is asked for.
    from maskrt.plugins.onnxruntime_ops import cpu_session as onnxruntime_cpu_session

    return onnxruntime_cpu_session(path_or_model)
