"""maskrt's custom TensorRT plugins (DESIGN.md, "Plugins"): contracts, CPU reference, ONNX Runtime custom ops."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    import onnx
    import onnxruntime


def cpu_session(path_or_model: Union[str, os.PathLike[str], onnx.ModelProto]) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session for a deploy graph of either surgery mode; plugin nodes run on the CPU reference.

    Raises ValueError naming the node and the attribute or input when a plugin node breaks its contract.
    """
    # ONNX Runtime and its extensions load only when a session is asked for.
    from maskrt.plugins.onnxruntime_ops import cpu_session as onnxruntime_cpu_session

    return onnxruntime_cpu_session(path_or_model)
