"""What maskrt prints while it works, readable both on a terminal and in a log.

On a terminal: rich's live progress bars. In a log (stderr redirected to a file or a CI runner): plain lines that say
the same, a line every LOG_INTERVAL_S and one at the end, never wrapped, never a spinner whose text only a terminal
shows. Text is printed as given: a path or a pip command such as `pip install 'maskrt[tensorrt]'` is never read as
rich markup.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

T = TypeVar("T")
LOG_INTERVAL_S = 10.0
_LOG_WIDTH = 10_000  # wide enough that rich never wraps a line in a log; tables are only as wide as their text


def make_console() -> Console:
    """A stderr console that prints text as given. In a log it neither wraps lines nor adds colour.

    The console follows sys.stderr as it is when printing (so pytest's capture sees it), but decides terminal or
    log when made: make it where the command starts."""
    terminal = sys.stderr.isatty()
    return Console(stderr=True, markup=False, highlight=False, soft_wrap=not terminal, width=None if terminal else _LOG_WIDTH)


def track(items: Iterable[T], description: str, console: Console | None, total: int | None = None, unit: str = "") -> Iterator[T]:
    """Yields `items`, showing how far along they are: a progress bar on a terminal, lines in a log, nothing when
    `console` is None. `unit` names what is counted ("images", "frames") in the log lines."""
    if console is None:
        yield from items
        return
    if total is None:
        total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    if console.is_terminal:
        columns = (
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(show_speed=True),
            TimeRemainingColumn(elapsed_when_finished=True),
        )
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(description, total=total)
            for item in items:
                yield item
                progress.advance(task)
        return
    started = last_line = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last_line >= LOG_INTERVAL_S:
            console.print(_progress_line(description, done, total, now - started, unit))
            last_line = now
    console.print(_progress_line(description, done, total, time.perf_counter() - started, unit))


def _progress_line(description: str, done: int, total: int | None, elapsed: float, unit: str) -> str:
    count = f"{done}/{total}" if total is not None else str(done)
    rate = f", {done / elapsed:.1f} {unit or 'items'}/s" if elapsed > 0 and done else ""
    return f"{description}: {count} {unit}".rstrip() + f" in {elapsed:.1f} s{rate}"
