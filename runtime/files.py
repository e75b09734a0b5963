"""Input and output files: inputs checked before reading, outputs written beside their destination and then renamed,
so that no reader sees half a file and no input is overwritten."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def check_input_path(path: Path, expected: str) -> None:
    """Refuses a path that is missing or a folder; `expected` names what the file should be ("an ONNX model")."""
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, expected {expected}")
    if not path.is_file():
        raise ValueError(f"{path}: file not found")


def check_output_path(output: Path, *inputs: Path) -> None:
    """Refuses an output whose folder is missing, that is a folder, or that is one of the command's `inputs`."""
    if not output.parent.is_dir():
        raise ValueError(f"{output}: the output folder {output.parent} does not exist")
    if output.is_dir():
        raise ValueError(f"{output}: is a folder, expected a file path")
    for source in inputs:
        if output.resolve() == source.resolve():
            raise ValueError(f"{output}: is also the input file; choose another output path")


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
