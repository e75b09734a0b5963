"""The kernels are compiled without FMA contraction: each product and sum is rounded on its own, as the CPU reference
and torchvision's CPU kernels round them, so that a pixel at the 0.5 mask threshold or a sample on a pixel edge falls
the same way on the GPU.

The oracle is NVIDIA's compilers themselves: the kernels are compiled to PTX with the options maskrt's build gives
them (NVRTC's, and nvcc's command line), with line info, and every `fma` in the PTX must come from a line that calls a
CUDA math-library function (whose own implementation fuses by design, exactly, e.g. log2f's polynomial), never from
the kernels' own arithmetic; and no `mul`/`add`/`sub` may lack its rounding mode, which would leave ptxas free to fuse
them. The same sources compiled with `--fmad=true` (nvcc's default) show fused arithmetic on the kernels' own lines,
so the check sees what it looks for.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from maskrt.plugins import kernel_build

# Calls whose library implementation may use fma itself (CUDA's math library); the kernels' own arithmetic may not.
MATH_LIBRARY = re.compile(r"\b(log2f|sqrtf|ldexpf|expf|logf|powf)\s*\(")
FUSED = re.compile(r"^\s*(?:@%p\d+\s+)?(fma|mad)\.\w+\.f32\b", re.MULTILINE)
UNROUNDED = re.compile(r"^\s*(?:@%p\d+\s+)?(mul|add|sub)\.(?:ftz\.)?f32\s", re.MULTILINE)
LOC = re.compile(r"^\s*\.loc\s+(\d+)\s+(\d+)\s+\d+")
FILE = re.compile(r'^\s*\.file\s+(\d+)\s+"([^"]+)"')
ARCH = 75  # one architecture that NVRTC 13 and nvcc 13 both build; the options, not the target, decide contraction


def fused_lines(ptx: str) -> dict[tuple[str, int], str]:
    """Source (file name, line) → that line's text, for every fused multiply-add in `ptx` (read from its .loc)."""
    files = {match.group(1): Path(match.group(2)).name for match in map(FILE.match, ptx.splitlines()) if match}
    where: tuple[str, int] | None = None
    found: dict[tuple[str, int], str] = {}
    for line in ptx.splitlines():
        if match := LOC.match(line):
            where = (files.get(match.group(1), "?"), int(match.group(2)))
        elif FUSED.match(line):
            assert where is not None, f"an fma before any .loc: {line}"
            found[where] = source_line(*where)
    return found


def source_line(name: str, number: int) -> str:
    path = kernel_build.KERNEL_DIR / name
    return path.read_text().splitlines()[number - 1] if path.is_file() else f"<{name}:{number}>"


def own_arithmetic_fused(ptx: str) -> dict[tuple[str, int], str]:
    return {where: text for where, text in fused_lines(ptx).items() if not MATH_LIBRARY.search(text)}


def nvrtc_ptx(name: str, options: list[str]) -> str:
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="needs cuda-python: pip install '.[test]'")
    from maskrt.plugins.cuda import check_cuda

    program = check_cuda(nvrtc.nvrtcCreateProgram(f'#include "{name}"\n'.encode(), b"unit.cu", 0, [], []), "creating")
    try:
        encoded = [option.encode() for option in [*options, "-lineinfo"]]
        check_cuda(nvrtc.nvrtcCompileProgram(program, len(encoded), encoded), f"compiling {name}")
        image = bytearray(check_cuda(nvrtc.nvrtcGetPTXSize(program), "PTX size"))
        check_cuda(nvrtc.nvrtcGetPTX(program, image), "PTX")
        return image.decode().rstrip("\0")
    finally:
        nvrtc.nvrtcDestroyProgram(program)


@pytest.mark.parametrize("name", kernel_build.SOURCES)
def test_nvrtc_compiles_each_kernel_without_contracting_its_arithmetic(name: str) -> None:
    ptx = nvrtc_ptx(name, kernel_build.nvrtc_options(f"compute_{ARCH}"))
    assert not own_arithmetic_fused(ptx), f"{name}: fused where the reference rounds separately"
    assert not UNROUNDED.findall(ptx), f"{name}: arithmetic without a rounding mode, which ptxas may fuse"


def test_nvcc_default_contraction_is_what_the_check_sees() -> None:
    """The control: NVRTC's and nvcc's default (--fmad=true) fuses the RoIAlign and paste arithmetic."""
    options = [option for option in kernel_build.nvrtc_options(f"compute_{ARCH}") if not option.startswith("--fmad")]
    for name in ("multilevel_roi_align.cu", "paste_masks.cu"):
        fused = own_arithmetic_fused(nvrtc_ptx(name, [*options, "--fmad=true"]))
        assert fused, f"{name}: no fused arithmetic even with --fmad=true: the check cannot see contraction"


@pytest.fixture(scope="module")
def nvcc_ptx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    nvcc = kernel_build.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    scratch = tmp_path_factory.mktemp("ptx")
    ptx = {}
    for name in kernel_build.SOURCES:
        output = scratch / f"{name}.ptx"
        command = kernel_build.nvcc_command(nvcc, "-ptx", [f"-arch=compute_{ARCH}", "-lineinfo"], kernel_build.KERNEL_DIR / name, output)
        subprocess.run(command, check=True, capture_output=True)
        ptx[name] = output.read_text()
    return ptx


@pytest.mark.parametrize("name", kernel_build.SOURCES)
def test_nvcc_compiles_each_kernel_without_contracting_its_arithmetic(nvcc_ptx: dict[str, str], name: str) -> None:
    assert "--fmad=false" in kernel_build.nvcc_command("nvcc", "-fatbin", [], Path("k.cu"), Path("k.fatbin"))
    assert not own_arithmetic_fused(nvcc_ptx[name]), f"{name}: fused where the reference rounds separately"
    assert not UNROUNDED.findall(nvcc_ptx[name]), f"{name}: arithmetic without a rounding mode, which ptxas may fuse"
