"""Output files: written beside their destination, then renamed, so no reader sees half a file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def check_output_path(output: Path) -> None:
    if not output.parent.is_dir():
        raise ValueError(f"{output}: the output folder {output.parent} does not exist")
    if output.is_dir():
        raise ValueError(f"{output}: is a folder, expected a file path")


def write_atomically(output: Path, data: bytes | memoryview) -> None:
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
