"""What maskrt's plugins raised inside TensorRT, kept for the code that asked TensorRT for the work.

TensorRT calls a Python plugin through its C++ wrapper (python/src/infer/pyPlugin.cpp in NVIDIA/TensorRT), which
catches whatever the plugin raises, prints it to stderr ("[ERROR] Exception caught in get_output_shapes(): ...") and
returns a failure code that TensorRT reports, if at all, in its own words ("... failed"). A plugin's contract error
(a node with a wrong input shape or dtype, found in get_output_shapes, configure_plugin or enqueue) or a CUDA error
(its kernels cannot compile or load) would reach the user only as that stderr line. So every method TensorRT calls
records its error here before the error propagates, and the code that asked TensorRT for the work (the ONNX parse
and the engine build, the deserialization and each run) raises the first recorded one as its one-line refusal:

    failures.clear()
    if not parser.parse(...) or engine is None or not context.execute_async_v3(...):
        raise BadInput(f"{path}: {failures.take() or tensorrt_reason}")

Thread-safe: TensorRT calls plugins from its own threads. Importing this module needs only the standard library.
"""

from __future__ import annotations

import threading

_LIMIT = 16  # the first errors are the ones that explain; later ones are usually their consequences
_lock = threading.Lock()
_recorded: list[str] = []


def record(message: str) -> None:
    """Keeps one plugin error (a sentence naming the plugin node)."""
    with _lock:
        if len(_recorded) < _LIMIT:
            _recorded.append(message)


def take() -> str | None:
    """The first error recorded since the last `take` or `clear`, and forgets them all; None when there was none."""
    with _lock:
        first = _recorded[0] if _recorded else None
        _recorded.clear()
    return first


def clear() -> None:
    """Forgets what earlier work recorded, before asking TensorRT for new work."""
    with _lock:
        _recorded.clear()
