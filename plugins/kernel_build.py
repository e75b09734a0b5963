"""Compiling the plugin kernels (plugins/kernels/*.cu) into one image that the driver loads.

nvcc builds one fatbin: SASS for every architecture in ARCHITECTURES that it supports, plus PTX of the oldest one,
which the driver compiles at load time on newer GPUs. Where nvcc is missing, NVRTC (cuda-python) compiles a CUBIN for
the GPU the kernels are about to run on, as NVIDIA's plugin samples do: a driver loads SASS from any compiler of its
CUDA major version, but PTX only from a compiler no newer than itself (pip's NVRTC 12.9 on JetPack 6.0's CUDA 12.2
driver). Both are compiled without FMA contraction (--fmad=false): the CPU reference and torchvision round each
product and sum on its own, and a fused one moves pixels at the 0.5 mask threshold.

The result is cached per user, keyed by the sources, the compiler, its flags and (NVRTC) the target; `setup.py`
builds the fatbin into the package at install time when nvcc is there. This module imports only the standard library
(setup.py loads it before maskrt is installed, and uses only its nvcc path); NVRTC and maskrt's CUDA error check are
imported when NVRTC is used.
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
from typing import TYPE_CHECKING

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
# --fmad=false: no multiply-add contraction (see above); the NMS kernel rounds its products with __fmul_rn besides.
FLAGS = ("-O3", "-std=c++14", "--fmad=false")


@dataclass(frozen=True)
class Compiler:
    kind: str  # "nvcc" or "nvrtc"
    path: str  # nvcc's path; empty for NVRTC
    identity: str  # version text, part of the cache key
    architectures: tuple[int, ...]  # nvcc: of ARCHITECTURES, those it can build; NVRTC: every one it can build


def build_fatbin(force: bool = False, console: Console | None = None, architecture: int | None = None) -> Path:
    """The compiled kernels: the install-time fatbin when it matches the sources, else the per-user cached build,
    compiled now when missing or when `force` is set. `architecture` (87 for sm_87) is the GPU they will run on, which
    NVRTC compiles for (GPU 0 when not given). Raises OSError when no CUDA compiler is available or NVRTC cannot
    compile for that GPU."""
    digest = sources_digest()
    packaged = KERNEL_DIR / FATBIN_NAME
    if not force and packaged.is_file() and _packaged_digest() == digest:
        return packaged
    compiler = find_compiler()
    if compiler.kind == "nvcc":
        target_arch, suffix, flags = "", "fatbin", list(FLAGS)
    else:
        target_arch = nvrtc_target(compiler, architecture if architecture is not None else _first_gpu_architecture(compiler))
        suffix, flags = ("cubin" if target_arch.startswith("sm_") else "ptx"), nvrtc_options(target_arch)
    key = hashlib.sha256("\n".join([digest, compiler.identity, *flags]).encode()).hexdigest()[:16]
    target = cache_dir() / f"maskrt_kernels-{key}{f'-{target_arch}' if target_arch else ''}.{suffix}"
    if force or not target.is_file():
        if console is not None:
            console.print(f"compiling maskrt's CUDA kernels with {describe(compiler, target_arch)}")
        image = compile_kernels(compiler, target_arch)
        write_atomically(target, image)
    return target


def build_into(directory: Path) -> Path | None:
    """setup.py's build step: the fatbin and its record in `directory` when nvcc is available, else None."""
    nvcc = find_nvcc()
    if nvcc is None:
        return None
    compiler = nvcc_compiler(nvcc)
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
        return nvcc_compiler(nvcc)
    try:
        return nvrtc_compiler()
    except OSError as error:
        raise OSError(f"compiling maskrt's CUDA kernels needs nvcc (the CUDA toolkit; on a Jetson, JetPack) or NVRTC, and neither is here ({error})") from None


def nvrtc_compiler() -> Compiler:
    """NVRTC through cuda-python; OSError saying what to install when cuda-python or its libnvrtc is missing."""
    from maskrt.plugins.cuda import NVRTC_HINT

    try:
        major, minor, supported_archs = _nvrtc_info()
    except ImportError as error:
        raise OSError(f"maskrt reaches NVRTC through cuda-python, which is not installed ({error}): {NVRTC_HINT}, with 'cuda-bindings>=12.6,<13'") from None
    except RuntimeError as error:  # no libnvrtc: CudaError from plugins.cuda.loading, naming it and what installs it
        raise OSError(str(error)) from None
    return Compiler("nvrtc", "", f"nvrtc {major}.{minor}", tuple(sorted(supported_archs)))


def nvcc_compiler(nvcc: str) -> Compiler:
    version = _run([nvcc, "--version"]).strip().splitlines()[-1]
    listed = _run([nvcc, "--list-gpu-arch"])
    supported = {int(arch) for arch in re.findall(r"compute_(\d+)", listed)}
    return Compiler("nvcc", nvcc, f"nvcc {version}", tuple(a for a in ARCHITECTURES if a in supported))


def nvrtc_target(compiler: Compiler, architecture: int) -> str:
    """What NVRTC compiles for a GPU of `architecture`: its CUBIN ("sm_87") when NVRTC knows the architecture; for a GPU
    newer than an architecture NVRTC knows, that one's PTX ("compute_90"), which the GPU's driver compiles. Raises
    OSError for a GPU older than every architecture this NVRTC builds (CUDA 13 dropped Xavier's sm_72)."""
    if architecture in compiler.architectures:
        return f"sm_{architecture}"
    older = [known for known in compiler.architectures if known < architecture]
    if older:
        return f"compute_{max(older)}"
    from maskrt.plugins.cuda import NVRTC_HINT

    dropped = " (CUDA 13 dropped Xavier: use JetPack's nvcc or NVRTC 12)" if architecture == 72 else ""
    raise OSError(
        f"{compiler.identity} cannot compile for this GPU's sm_{architecture}{dropped}; it builds "
        f"sm_{', sm_'.join(map(str, compiler.architectures))}: {NVRTC_HINT}"
    )


def describe(compiler: Compiler, target: str = "") -> str:
    if compiler.kind != "nvcc":
        if target.startswith("sm_"):
            return f"{compiler.identity} (no nvcc found): a CUBIN for this GPU ({target})"
        return f"{compiler.identity} (no nvcc found): PTX for {target}, which the driver compiles for this newer GPU"
    built = ", ".join(f"sm_{a}" for a in compiler.architectures)
    missing = [f"sm_{a}" for a in ARCHITECTURES if a not in compiler.architectures]
    text = f"{compiler.identity}: SASS for {built}, PTX for compute_{compiler.architectures[0]}"
    if missing:
        text += f"; this compiler cannot build {', '.join(missing)}"
        if "sm_72" in missing:
            text += " (CUDA 13 dropped Xavier: build on the Jetson with JetPack's nvcc)"
    return text


def translation_unit() -> str:
    """Both sources in one unit, so one image per architecture holds every kernel."""
    return "".join(f'#include "{name}"\n' for name in SOURCES)


def compile_kernels(compiler: Compiler, target: str = "") -> bytes:
    """nvcc's fatbin; NVRTC's image for `target` (nvrtc_target: "sm_87" a CUBIN, "compute_90" PTX)."""
    if not compiler.architectures:
        raise OSError(f"{compiler.identity} supports none of sm_{', sm_'.join(map(str, ARCHITECTURES))}")
    if compiler.kind == "nvcc":
        return nvcc_fatbin(compiler.path, compiler.architectures)
    return nvrtc_compile(translation_unit(), target, ptx=target.startswith("compute_"))


def nvcc_fatbin(nvcc: str, architectures: Sequence[int], source: Path | None = None) -> bytes:
    """One nvcc call: SASS per architecture (compiled in parallel) and PTX of the first one."""
    with tempfile.TemporaryDirectory(prefix="maskrt-nvcc-") as scratch:
        if source is None:
            source = Path(scratch) / "maskrt_kernels.cu"
            source.write_text(translation_unit())
        output = Path(scratch) / FATBIN_NAME
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in architectures]
        gencode.append(f"-gencode=arch=compute_{architectures[0]},code=compute_{architectures[0]}")
        _run(nvcc_command(nvcc, "-fatbin", gencode, source, output))
        return output.read_bytes()


def nvcc_command(nvcc: str, mode: str, targets: Sequence[str], source: Path, output: Path) -> list[str]:
    """nvcc's command line for `source`: `mode` "-fatbin" (what maskrt loads) or "-ptx" (to read what it compiles)."""
    return [nvcc, mode, *FLAGS, "--threads", "0", "-I", str(KERNEL_DIR), *targets, "-o", str(output), str(source)]


def nvrtc_options(arch: str) -> list[str]:
    """NVRTC's options for `arch` (sm_XX or compute_XX): nvcc's FLAGS in NVRTC's spelling (it optimises by default)."""
    return [f"--gpu-architecture={arch}", "-std=c++14", "--fmad=false", f"--include-path={KERNEL_DIR}"]


def nvrtc_compile(source: str, arch: str, ptx: bool = False) -> bytes:
    """NVRTC: a cubin for `arch` (sm_XX), or PTX for it (compute_XX) when `ptx` is set. OSError when it fails."""
    from cuda.bindings import nvrtc

    from maskrt.plugins.cuda import NVRTC_HINT, CudaError, check_cuda, loading

    try:
        with loading("NVRTC (libnvrtc)", NVRTC_HINT):
            created = nvrtc.nvrtcCreateProgram(source.encode(), b"maskrt_kernels.cu", 0, [], [])
        program = check_cuda(created, "creating the NVRTC program")
    except CudaError as error:
        raise OSError(str(error)) from None
    try:
        options = [option.encode() for option in nvrtc_options(arch)]
        try:
            check_cuda(nvrtc.nvrtcCompileProgram(program, len(options), options), f"NVRTC compiling the kernels for {arch}")
        except CudaError as error:
            log = bytearray(check_cuda(nvrtc.nvrtcGetProgramLogSize(program), "reading NVRTC's log size"))
            check_cuda(nvrtc.nvrtcGetProgramLog(program, log), "reading NVRTC's log")
            raise OSError(f"{error}:\n{log.decode(errors='replace').rstrip(chr(0))}") from None
        if ptx:
            image = bytearray(check_cuda(nvrtc.nvrtcGetPTXSize(program), "reading the PTX size"))
            check_cuda(nvrtc.nvrtcGetPTX(program, image), "reading the PTX")
        else:
            image = bytearray(check_cuda(nvrtc.nvrtcGetCUBINSize(program), "reading the CUBIN size"))
            check_cuda(nvrtc.nvrtcGetCUBIN(program, image), "reading the CUBIN")
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
    """NVRTC's version and the architectures it builds; ImportError without cuda-python, CudaError (a RuntimeError)
    when NVRTC cannot be loaded or answers with an error."""
    from cuda.bindings import nvrtc

    from maskrt.plugins.cuda import NVRTC_HINT, check_cuda, loading

    with loading("NVRTC (libnvrtc)", NVRTC_HINT):
        version = nvrtc.nvrtcVersion()
    major, minor = check_cuda(version, "reading NVRTC's version")
    archs = check_cuda(nvrtc.nvrtcGetSupportedArchs(), "reading the architectures NVRTC builds")
    return int(major), int(minor), {int(arch) for arch in archs}


def _first_gpu_architecture(compiler: Compiler) -> int:
    """GPU 0's compute capability (87 for sm_87), which NVRTC compiles for when no GPU was named."""
    from maskrt.plugins.cuda import CudaError, check_cuda, loading

    try:
        from cuda.bindings import driver

        with loading("the NVIDIA driver library (libcuda)", "NVRTC compiles for the GPU the kernels run on"):
            initialised = driver.cuInit(0)
        check_cuda(initialised, "initialising CUDA")
        device = check_cuda(driver.cuDeviceGet(0), "finding GPU 0")
        attribute = driver.CUdevice_attribute
        major = check_cuda(driver.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device), "reading GPU 0")
        minor = check_cuda(driver.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device), "reading GPU 0")
    except (ImportError, CudaError) as error:
        raise OSError(
            f"{compiler.identity} compiles maskrt's kernels for the GPU they run on, and no GPU could be read here "
            f"({error}): compile them on that machine, or with nvcc, which builds every architecture"
        ) from None
    return int(major) * 10 + int(minor)


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
