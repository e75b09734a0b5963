"""TensorRT's log as maskrt shows it: one ILogger for the engine build (convert/build.py) and the runtime
(runtime/engine.py). TensorRT is imported when a logger is made, never by importing this module."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from rich.console import Console

if TYPE_CHECKING:
    import tensorrt as trt

    class TensorRTLog(trt.ILogger):
        errors: list[str]


def tensorrt_logger(console: Console, verbose: bool, warnings: bool) -> TensorRTLog:
    """A TensorRT logger that keeps each error's last line in `.errors`, so that a failure can be told with TensorRT's
    own reason; it prints TensorRT's whole log with `verbose`, else its warnings when `warnings` is set."""
    import tensorrt as trt

    severity = trt.ILogger.Severity
    failures = (severity.INTERNAL_ERROR, severity.ERROR)

    class Log(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level: trt.ILogger.Severity, msg: str) -> None:
            if level in failures:
                self.errors.append(msg.strip().splitlines()[-1] if msg.strip() else msg)
            if verbose:
                console.print(f"TensorRT [{level.name}] {msg}", style="dim")
            elif warnings and level == severity.WARNING:
                console.print(f"TensorRT: {msg}", style="yellow")

    return cast("TensorRTLog", Log())
