"""Ctrl-C and SIGTERM as exceptions: KeyboardInterrupt and Terminated, raised in the main thread, where the paths that
clean up after a stop run (temporary files removed, what was complete kept); and the calls they must wait for.

Python raises a signal's exception at the next bytecode of the main thread, wherever that is. Inside Python code that
a native library calls back (ONNX Runtime's Python custom ops, TensorRT's Python plugins) the exception cannot travel
back through the library, which then aborts the whole process (pybind11: "terminate called after throwing") or turns
it into an error of its own. Such calls run under deferred_interrupts: the signal waits until the call returns, then
stops the command as usual. What is left (a signal that lands in an extension module's import) interrupts_raised
reports as the interrupt it was.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

from maskrt.contracts.errors import Terminated

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupts_raised() -> Iterator[None]:
    """While the block runs, SIGINT raises KeyboardInterrupt and SIGTERM Terminated (by default SIGTERM ends the
    process with no cleanup at all). A signal that lands inside native code (an extension module being imported, a
    callback) can come out of the block as some other exception ("initialization failed", a SystemError): any failure
    after a signal is raised as that signal's interrupt, from the failure."""
    received: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise _interrupt(signum)

    try:
        with _handled(STOP_SIGNALS, stop):
            yield
    except Exception as failure:
        if received:
            raise _interrupt(received[-1]) from failure
        raise


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends, then reach the handlers that were there before (under
    interrupts_raised: KeyboardInterrupt or Terminated, raised after the block). Only the main thread receives
    signals: elsewhere it does nothing."""
    received: list[int] = []
    # A handler installed from C (getsignal gives None) cannot be put back from Python: that signal is left alone.
    held = [signum for signum in STOP_SIGNALS if signal.getsignal(signum) is not None]
    try:
        with _handled(held, lambda signum, frame: received.append(signum)):
            yield
    finally:
        for held_signal in dict.fromkeys(received):
            signal.raise_signal(held_signal)


@contextlib.contextmanager
def _handled(signums: Sequence[int], handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """`handler` for `signums` while the block runs; the handlers before it afterwards. Only the main thread
    receives signals (and may set their handlers): elsewhere nothing changes."""
    previous = {signum: signal.signal(signum, handler) for signum in signums} if _in_main_thread() else {}
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
