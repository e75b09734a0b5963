"""Ctrl-C and SIGTERM as exceptions: KeyboardInterrupt and Terminated, raised in the main thread, where the paths that
clean up after a stop run (temporary files removed, what was complete kept); and the calls they must wait for.

Python raises a signal's exception at the next bytecode of the main thread, wherever that is. Inside Python code that
a native library calls back (ONNX Runtime's Python custom ops, TensorRT's Python plugins) the exception cannot travel
back through the library, which then aborts the whole process (pybind11: "terminate called after throwing"). Such
calls run under deferred_interrupts: the signal waits until the call returns, then stops the command as usual.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from maskrt.contracts.errors import Terminated

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    """The SIGTERM handler: the Terminated exception, in the main thread."""
    raise Terminated()


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """SIGTERM raises Terminated while the block runs (by default it ends the process with no cleanup at all)."""
    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends, then reach the handlers that were there before (raising
    KeyboardInterrupt or Terminated after the block). Only the main thread receives signals: elsewhere it does
    nothing."""
    if not _in_main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    # A handler installed from C (getsignal gives None) cannot be put back from Python: that signal is left alone.
    held = [signum for signum in STOP_SIGNALS if signal.getsignal(signum) is not None]
    previous = {signum: signal.signal(signum, hold) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
