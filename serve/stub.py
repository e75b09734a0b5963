"""The environment Triton's Python backend stub needs to run in this Python, for PyTriton and for a model repository.

Triton runs each Python-backend model instance in a stub process (`triton_python_backend_stub`) that embeds the
interpreter whose libpython it finds. Three facts about the stubs nvidia-pytriton 0.7.0 ships (Triton 2.51):

- The stub links `libpython3.X.so.1.0` by name, so the dynamic loader takes the first one on its path: on a Debian
  machine with pyenv's Python that is the system's libpython (3.11.2), not the interpreter's own (3.11.7), and the
  stub then runs the system's standard library and site-packages (no NumPy there; or, with the interpreter's
  packages, `'_thread.RLock' object has no attribute '_recursion_count'`). The interpreter's lib folder
  (sys.base_prefix/lib) first on LD_LIBRARY_PATH makes it load the right one.
- The stub starts its interpreter isolated (sys.flags.isolated = 1): PYTHONPATH and PYTHONHOME are ignored. Its
  sys.path is '' (the working directory) first, then the interpreter's own paths and site-packages, then the
  model's folder and the backend's folder: the working directory is the one place that comes before site-packages.
- The stub is built with pybind11 2.10, which reads NumPy arrays with NumPy 1's struct layout: with NumPy 2 every
  tensor crossing the stub is corrupted (input strides 0, outputs of 0 bytes; Triton's python_backend fixed this in
  its pybind11 2.12 update, after 2.51). maskrt's runtime needs NumPy 2 (opencv-python 5). So the stub runs with a
  working directory that holds NumPy 1.26 (installed once, for the stub only, into maskrt's cache) and, for model
  repositories whose models import maskrt, this process's own maskrt packages.

`stub_environment()` gives tritonserver's environment variables and working directory; everything it starts (the
stubs) inherits both.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from maskrt.contracts.errors import BadInput

STUB_NUMPY = "1.26.4"  # the last NumPy 1: wheels for CPython 3.9 to 3.12
STUB_NUMPY_ENV = "MASKRT_TRITON_STUB_NUMPY"  # a folder that already holds NumPy 1 for the stub (offline machines)
# The maskrt subpackages a repository's Python-backend models import (linked into the stub's working directory).
STUB_MASKRT_PACKAGES = ("contracts", "plugins", "runtime", "serve")


@dataclass(frozen=True)
class StubEnvironment:
    """What tritonserver is started with so that its Python backend stubs run this interpreter."""

    variables: dict[str, str]  # the whole environment for tritonserver
    workdir: Path  # tritonserver's (and so the stubs') working directory: '' on the stubs' sys.path


def interpreter_library_dir() -> Path | None:
    """The folder of this interpreter's own shared libpython, or None for a statically linked Python."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for folder in (Path(sys.base_prefix) / "lib", Path(str(_config_var("LIBDIR") or ""))):
        if folder.is_dir() and any(folder.glob(f"libpython{version}*.so*")):
            return folder
    return None


def _config_var(name: str) -> object:
    import sysconfig

    return sysconfig.get_config_var(name)


def library_path(extra: list[Path] | None = None) -> str:
    """LD_LIBRARY_PATH for tritonserver: this interpreter's lib folder first, then `extra`, then what was set."""
    folders = [folder for folder in (interpreter_library_dir(), *(extra or [])) if folder is not None]
    current = [part for part in os.environ.get("LD_LIBRARY_PATH", "").split(":") if part]
    return ":".join(dict.fromkeys([str(folder) for folder in folders] + current))


def stub_numpy_dir() -> Path:
    """Where NumPy 1 for the stub lives: $MASKRT_TRITON_STUB_NUMPY, else maskrt's cache (one folder per Python)."""
    given = os.environ.get(STUB_NUMPY_ENV)
    if given:
        return Path(given)
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return root / "maskrt" / "triton-stub" / f"numpy-{STUB_NUMPY}-{tag}"


def stub_needs_numpy1() -> bool:
    """True when this interpreter's NumPy is 2 or later, which the stub's pybind11 cannot read."""
    return int(np.__version__.split(".")[0]) >= 2


def prepare_stub_numpy(console: Console | None = None) -> Path | None:
    """The folder holding NumPy 1 for the stub (installed there with pip on first use), or None when this
    interpreter's NumPy is already 1. ValueError with the command to run where pip cannot install it."""
    if not stub_needs_numpy1():
        return None
    folder = stub_numpy_dir()
    if (folder / "numpy" / "__init__.py").is_file():
        return folder
    if os.environ.get(STUB_NUMPY_ENV):
        raise BadInput(f"{STUB_NUMPY_ENV}={folder}: holds no numpy package (expected {folder}/numpy/__init__.py)")
    if sys.version_info >= (3, 13):
        raise BadInput(
            f"PyTriton's Python backend stub reads NumPy 1 arrays only and NumPy 1 has no wheels for Python "
            f"{sys.version_info.major}.{sys.version_info.minor}: serve from Python 3.10 to 3.12"
        )
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target"]
    if console is not None:
        console.print(
            f"Triton's Python backend stub (pybind11 2.10) reads NumPy 1 arrays and this Python has NumPy {np.__version__}: "
            f"installing numpy=={STUB_NUMPY} for the stub only, into {folder} (once)"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        done = subprocess.run([*command, str(staging), f"numpy=={STUB_NUMPY}"], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise BadInput(
                f"{folder}: could not install numpy=={STUB_NUMPY} for Triton's Python backend stub ({last}); run "
                f"`{' '.join(command)} {folder} numpy=={STUB_NUMPY}` where PyPI is reachable, or set {STUB_NUMPY_ENV} "
                "to a folder that holds it"
            )
        with contextlib.suppress(FileExistsError, OSError):
            os.replace(staging, folder)  # another process may have made it first: either copy is whole
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not (folder / "numpy" / "__init__.py").is_file():
        raise BadInput(f"{folder}: pip finished but left no numpy package there")
    return folder


@contextlib.contextmanager
def stub_environment(
    console: Console | None = None, with_maskrt: bool = False, library_dirs: list[Path] | None = None
) -> Iterator[StubEnvironment]:
    """tritonserver's environment and working directory (a temporary folder, removed afterwards) for stubs that
    run this interpreter: NumPy 1 linked in where this Python has NumPy 2, and with `with_maskrt` the maskrt
    packages this process imports (STUB_MASKRT_PACKAGES), so that a repository's models import the same code."""
    numpy1 = prepare_stub_numpy(console)
    workdir = Path(tempfile.mkdtemp(prefix="maskrt-triton-stub-"))
    try:
        if numpy1 is not None:
            for entry in numpy1.iterdir():
                if entry.name.startswith("numpy"):
                    (workdir / entry.name).symlink_to(entry)
        if with_maskrt:
            (workdir / "maskrt").mkdir()
            for name in STUB_MASKRT_PACKAGES:
                module = importlib.import_module(f"maskrt.{name}")
                (workdir / "maskrt" / name).symlink_to(Path(str(module.__file__)).parent)
        variables = dict(os.environ)
        variables["LD_LIBRARY_PATH"] = library_path(library_dirs)
        yield StubEnvironment(variables=variables, workdir=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc), parents before children; [] where /proc cannot be read."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop(0)
        tree.append(current)
        pending += children.get(current, [])
    return tree


def rss_bytes(pids: list[int]) -> int:
    """The resident memory of these processes together (from /proc/PID/status; gone processes count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total
