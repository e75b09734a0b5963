"""maskrt's custom TensorRT plugins: CUDA kernels, their build, the TensorRT glue, CPU references."""

from __future__ import annotations


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
