"""maskrt's custom TensorRT plugins (docs/design.md, "Plugins"): CUDA kernels and their build, the TensorRT glue, the
CPU reference and the ONNX Runtime custom ops built on it. Their node contract is contracts/plugins.py."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    import onnx
    import onnxruntime


class PluginsUnavailable(ImportError):
    """maskrt's plugins cannot be registered here: no TensorRT, or one older than 10 (no IPluginV3). Its message is
    the one-line refusal to show."""


def register() -> None:
    """Register the MultilevelRoIAlign and BatchedNMS creators (namespace "maskrt") with TensorRT's plugin registry,
    so that TensorRT's ONNX parser and engine deserialisation find them. Calling it again does nothing.

    Raises PluginsUnavailable (an ImportError) saying what is missing. Errors the plugins raise later, inside
    TensorRT, are kept by maskrt.plugins.failures for the caller to report."""
    try:
        import tensorrt as trt

        version = str(trt.__version__)
    except (ImportError, AttributeError):  # tensorrt-stubs alone import as a namespace package without a version
        from maskrt.plugins.cuda import INSTALL_HINT

        raise PluginsUnavailable(f"maskrt's TensorRT plugins need TensorRT >= 10, which is not installed here: {INSTALL_HINT}") from None
    if not hasattr(trt, "IPluginV3"):
        raise PluginsUnavailable(
            f"maskrt's TensorRT plugins are IPluginV3 plugins, which need TensorRT >= 10; TensorRT {version} is installed "
            "here: convert the model with --plugins native for it"
        )
    from maskrt.plugins.tensorrt_plugins import register_creators

    register_creators()


def cpu_session(path_or_model: Union[str, os.PathLike[str], onnx.ModelProto]) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session for a deploy graph of either surgery mode; plugin nodes run on the CPU reference.

    Raises ValueError naming the node and the attribute or input when a plugin node breaks its contract.
    """
    # ONNX Runtime and its extensions load only when a session is asked for.
    from maskrt.plugins.onnxruntime_ops import cpu_session as onnxruntime_cpu_session

    return onnxruntime_cpu_session(path_or_model)
