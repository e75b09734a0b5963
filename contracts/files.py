"""Input and output files: inputs checked before reading, outputs written beside their destination and then renamed,
so that no reader sees half a file and no input is overwritten; and the one reader of ONNX files."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from maskrt.contracts.errors import BadInput

if TYPE_CHECKING:
    import onnx


def check_input_path(path: Path, expected: str) -> None:
    """Refuses a path that is missing or a folder; `expected` names what the file should be ("an ONNX model")."""
    if path.is_dir():
        raise BadInput(f"{path}: is a folder, expected {expected}")
    if not path.is_file():
        raise BadInput(f"{path}: file not found")


def check_output_path(output: Path, *inputs: Path) -> None:
    """Refuses, before any work is done, an output whose folder is missing or cannot be written, that is a folder, or
    that is one of the command's `inputs`."""
    if not output.parent.is_dir():
        state = "is a file" if output.parent.exists() else "does not exist"
        raise BadInput(f"{output}: the output folder {output.parent} {state}")
    if output.is_dir():
        raise BadInput(f"{output}: is a folder, expected a file path")
    for source in inputs:
        if output.resolve() == source.resolve():
            raise BadInput(f"{output}: is also the input file; choose another output path")
    check_writable(output.parent, output)


def check_output_folder(folder: Path) -> None:
    """Refuses, before any work is done, an output folder that is a file or that cannot be made or written in (its
    missing parents are made as it is)."""
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"{folder}: exists and is not a folder")
    existing = next(parent for parent in (folder, *folder.absolute().parents) if parent.exists())
    if not existing.is_dir():
        raise BadInput(f"{folder}: {existing} is a file, so no folder can be made under it")
    check_writable(existing, folder)


def check_new_folder(folder: Path) -> None:
    """Refuses, before any work is done, an output folder that holds anything, or that cannot be made or written in."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BadInput(f"{folder}: exists and is not an empty folder; choose a new output folder")
    if not folder.parent.is_dir():
        raise BadInput(f"{folder}: the folder {folder.parent} does not exist")
    check_writable(folder if folder.exists() else folder.parent, folder)


@contextlib.contextmanager
def staged_folder(folder: Path) -> Iterator[Path]:
    """A folder to write `folder` (new or empty: check_new_folder) through: made beside it, renamed to it when the block
    ends, removed if the block raises, so that the folder appears whole or not at all."""
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_writable(folder: Path, output: Path) -> None:
    """Refuses `output` when no file can be made in `folder`, where it is written. Tried with a file of the kind
    open_atomically makes, removed at once: permissions alone do not tell (root ignores them; /proc, a read-only
    mount or a full quota refuse what they allow)."""
    try:
        descriptor, probe = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".probe", dir=folder)
    except OSError as error:
        raise BadInput(f"{output}: cannot be written, {folder} takes no new files ({error.strerror})") from None
    os.close(descriptor)
    os.unlink(probe)


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


def read_onnx(path: Path, expected: str = "an ONNX model") -> onnx.ModelProto:
    """The ONNX model at `path` with its external data (kept beside it, as onnx.save writes it); BadInput naming the
    file when it is missing, empty, not ONNX, or a graph without nodes."""
    import onnx
    from google.protobuf.message import DecodeError

    check_input_path(path, expected)
    data = path.read_bytes()
    if not data:
        raise BadInput(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load_from_string(data)
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (DecodeError, ValueError, RuntimeError, OSError) as error:
        reason = str(error).splitlines()[0][:100] if str(error).strip() else type(error).__name__
        raise BadInput(f"{path}: not a readable ONNX model ({reason})") from None
    if not model.graph.node:
        raise BadInput(f"{path}: an ONNX model without nodes, not a graph to convert or run")
    return model


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in parts (an export can be hundreds of megabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
