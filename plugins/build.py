"""Compiling the plugin kernels (plugins/kernels/*.cu) into one fatbin that the driver loads on any listed GPU.

nvcc builds SASS for every architecture in ARCHITECTURES that it supports, plus PTX of the oldest one, which the
driver compiles at load time on newer GPUs. Where nvcc is missing, NVRTC (cuda-python) compiles that PTX alone.
The result is cached per user, keyed by the sources, the compiler and its flags; `setup.py` builds it into the
package at install time when nvcc is there. This module imports only the standard library: setup.py loads it
before maskrt is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

# Xavier (72), Turing (75), Ampere (80, 86, Orin 87), Ada (89), Hopper (90), Blackwell RTX (120).
ARCHITECTURES = (72, 75, 80, 86, 87, 89, 90, 120)
KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
# The plugins' kernels, and the runtime's mask pasting (maskrt.runtime.gpu_paste), which loads from the same fatbin.
SOURCES = ("multilevel_roi_align.cu", "batched_nms.cu", "paste_masks.cu")
FATBIN_NAME = "maskrt_kernels.fatbin"
# Written beside a fatbin built at install time: which sources it was built from.
PACKAGED_RECORD = "maskrt_kernels.json"
FLAGS = ("-O3", "-std=c++14")


@dataclass(frozen=True)
class Compiler:
    kind: str  # "nvcc" or "nvrtc"
    path: str  # nvcc's path; empty for NVRTC
    identity: str  # version text, part of the cache key
    architectures: tuple[int, ...]  # of ARCHITECTURES, those it can build


def build_fatbin(force: bool = False, console: Console | None = None) -> Path:
    """The compiled kernels: the install-time fatbin when it matches the sources, else the per-user cached build,
    compiled now when missing or when `force` is set. Raises OSError when no CUDA compiler is available."""
    digest = sources_digest()
    packaged = KERNEL_DIR / FATBIN_NAME
    if not force and packaged.is_file() and _packaged_digest() == digest:
        return packaged
    compiler = find_compiler()
    key = hashlib.sha256("\n".join([digest, compiler.identity, *FLAGS]).encode()).hexdigest()[:16]
    suffix = "fatbin" if compiler.kind == "nvcc" else "ptx"
    target = cache_dir() / f"maskrt_kernels-{key}.{suffix}"
    if force or not target.is_file():
        if console is not None:
            console.print(f"compiling maskrt's CUDA kernels with {describe(compiler)}")
        image = compile_kernels(compiler)
        write_atomically(target, image)
    return target


def build_into(directory: Path) -> Path | None:
    """setup.py's build step: the fatbin and its record in `directory` when nvcc is available, else None."""
    compiler = find_compiler()
    if compiler.kind != "nvcc":
        return None
    target = directory / FATBIN_NAME
    write_atomically(target, compile_kernels(compiler))
    record = {"sources": sources_digest(), "compiler": compiler.identity, "architectures": compiler.architectures}
    write_atomically(directory / PACKAGED_RECORD, json.dumps(record, indent=1).encode())
    return target


def sources_digest() -> str:
    hasher = hashlib.sha256()
    for path in sorted([*KERNEL_DIR.glob("*.cu"), *KERNEL_DIR.glob("*.cuh")]):
        hasher.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return hasher.hexdigest()


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "maskrt"


def find_nvcc() -> str | None:
    candidates = [shutil.which("nvcc")]
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            candidates.append(str(Path(os.environ[variable]) / "bin" / "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def find_compiler() -> Compiler:
    """nvcc when installed (the CUDA toolkit, JetPack), else NVRTC through cuda-python."""
    nvcc = find_nvcc()
    if nvcc is not None:
        version = _run([nvcc, "--version"]).strip().splitlines()[-1]
        listed = _run([nvcc, "--list-gpu-arch"])
        supported = {int(arch) for arch in re.findall(r"compute_(\d+)", listed)}
        return Compiler("nvcc", nvcc, f"nvcc {version}", tuple(a for a in ARCHITECTURES if a in supported))
    try:
        major, minor, supported_archs = _nvrtc_info()
    except ImportError:
        raise OSError(
            "compiling maskrt's CUDA kernels needs nvcc (the CUDA toolkit; on a Jetson, JetPack) or NVRTC: "
            "pip install cuda-bindings nvidia-cuda-nvrtc"
        ) from None
    return Compiler("nvrtc", "", f"nvrtc {major}.{minor}", tuple(a for a in ARCHITECTURES if a in supported_archs))


def describe(compiler: Compiler) -> str:
    built = ", ".join(f"sm_{a}" for a in compiler.architectures)
    missing = [f"sm_{a}" for a in ARCHITECTURES if a not in compiler.architectures]
    if compiler.kind == "nvcc":
        text = f"{compiler.identity}: SASS for {built}, PTX for compute_{compiler.architectures[0]}"
    else:
        text = f"{compiler.identity} (no nvcc found): PTX for compute_{compiler.architectures[0]}, compiled by the driver"
    if missing:
        text += f"; this compiler cannot build {', '.join(missing)}"
        if "sm_72" in missing:
            text += " (CUDA 13 dropped Xavier: build on the Jetson with JetPack's nvcc)"
    return text


def translation_unit() -> str:
    """Both sources in one unit, so one image per architecture holds every kernel."""
    return "".join(f'#include "{name}"\n' for name in SOURCES)


def compile_kernels(compiler: Compiler) -> bytes:
    if not compiler.architectures:
        raise OSError(f"{compiler.identity} supports none of sm_{', sm_'.join(map(str, ARCHITECTURES))}")
    if compiler.kind == "nvcc":
        return nvcc_fatbin(compiler.path, compiler.architectures)
    return nvrtc_compile(translation_unit(), f"compute_{compiler.architectures[0]}", ptx=True)


def nvcc_fatbin(nvcc: str, architectures: Sequence[int], source: Path | None = None) -> bytes:
    """One nvcc call: SASS per architecture (compiled in parallel) and PTX of the first one."""
    with tempfile.TemporaryDirectory(prefix="maskrt-nvcc-") as scratch:
        if source is None:
            source = Path(scratch) / "maskrt_kernels.cu"
            source.write_text(translation_unit())
        output = Path(scratch) / FATBIN_NAME
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in architectures]
        gencode.append(f"-gencode=arch=compute_{architectures[0]},code=compute_{architectures[0]}")
        _run([nvcc, "-fatbin", *FLAGS, "--threads", "0", "-I", str(KERNEL_DIR), *gencode, "-o", str(output), str(source)])
        return output.read_bytes()


def nvrtc_compile(source: str, arch: str, ptx: bool = False) -> bytes:
    """NVRTC: a cubin for `arch` (sm_XX), or PTX for it (compute_XX) when `ptx` is set."""
    from cuda.bindings import nvrtc

    def check(result: Any) -> Any:
        error, *values = result
        if error != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise OSError(f"NVRTC: {nvrtc.nvrtcGetErrorString(error)[1].decode()}")
        return values[0] if values else None

    program = check(nvrtc.nvrtcCreateProgram(source.encode(), b"maskrt_kernels.cu", 0, [], []))
    try:
        options = [f"--gpu-architecture={arch}".encode(), b"-std=c++14", f"--include-path={KERNEL_DIR}".encode()]
        (error,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
        if error != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            log = bytearray(check(nvrtc.nvrtcGetProgramLogSize(program)))
            check(nvrtc.nvrtcGetProgramLog(program, log))
            raise OSError(f"NVRTC could not compile the kernels for {arch}:\n{log.decode(errors='replace').rstrip(chr(0))}")
        if ptx:
            image = bytearray(check(nvrtc.nvrtcGetPTXSize(program)))
            check(nvrtc.nvrtcGetPTX(program, image))
        else:
            image = bytearray(check(nvrtc.nvrtcGetCUBINSize(program)))
            check(nvrtc.nvrtcGetCUBIN(program, image))
        return bytes(image)
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _nvrtc_info() -> tuple[int, int, set[int]]:
    from cuda.bindings import nvrtc

    _, major, minor = nvrtc.nvrtcVersion()
    _, archs = nvrtc.nvrtcGetSupportedArchs()
    return major, minor, set(archs)


def _packaged_digest() -> str | None:
    try:
        return str(json.loads((KERNEL_DIR / PACKAGED_RECORD).read_text())["sources"])
    except (OSError, ValueError, KeyError):
        return None


def _run(command: Sequence[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise OSError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout
