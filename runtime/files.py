"""Output files: written beside their destination, then renamed, so no reader sees half a file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def check_output_path(output: Path) -> None:
    if not output.parent.is_dir():
        raise ValueError(f"{output}: the output folder {output.parent} does not exist")
    if output.is_dir():
        raise ValueError(f"{output}: is a folder, expected a file path")


def write_atomically(output: Path, data: bytes) -> None:
    with open_atomically(output) as file:
        file.write(data)


@contextlib.contextmanager
def open_atomically(output: Path) -> Iterator[BinaryIO]:
    """A file to write `output` through: it becomes `output` when the block ends, and is gone if the block raises.
    For content written in parts (np.savez), which then never needs to be whole in memory."""
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as file:
            yield file
        os.replace(tmp, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
