"""Every kernel source compiles for every architecture maskrt ships (sm_72 .. sm_120), and build_fatbin caches."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from maskrt.plugins import kernel_build


@pytest.fixture(scope="module")
def nvcc() -> kernel_build.Compiler:
    path = kernel_build.find_nvcc()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have nvcc (the CUDA toolkit) to prove the kernels compile")
        pytest.skip("nvcc not found")
    return kernel_build.find_compiler()


def test_every_source_compiles_for_every_architecture_nvcc_supports(nvcc: kernel_build.Compiler) -> None:
    missing = set(kernel_build.ARCHITECTURES) - set(nvcc.architectures)
    assert missing <= {72}, f"{nvcc.identity} cannot build {missing}"  # CUDA 13 dropped sm_72: see the NVRTC 12 test
    with ThreadPoolExecutor(max_workers=2) as pool:
        images = list(
            pool.map(lambda name: kernel_build.nvcc_fatbin(nvcc.path, nvcc.architectures, kernel_build.KERNEL_DIR / name), kernel_build.SOURCES)
        )
    assert all(images)


def test_every_source_compiles_for_sm72_with_nvrtc_12() -> None:
    """NVRTC 12 (the nvidia-cuda-nvrtc-cu12 wheel) still targets Xavier; it is loaded before cuda-python looks for
    an NVRTC, in a process of its own, so cuda-python uses it."""
    try:
        library = next(
            str(file.locate())
            for file in importlib.metadata.files("nvidia-cuda-nvrtc-cu12") or []
            if file.name == "libnvrtc.so.12"
        )
    except (importlib.metadata.PackageNotFoundError, StopIteration):
        pytest.fail("nvidia-cuda-nvrtc-cu12 is not installed: pip install '.[test]'")
    script = f"""
import ctypes, os
ctypes.CDLL({library!r}, mode=os.RTLD_GLOBAL)
from maskrt.plugins import kernel_build
major, minor, archs = kernel_build._nvrtc_info()
assert major == 12 and 72 in archs, (major, minor)
for name in kernel_build.SOURCES:
    image = kernel_build.nvrtc_compile(f'#include "{{name}}"\\n', "sm_72")
    assert image[:4] == b"\\x7fELF", name
"""
    subprocess.run([sys.executable, "-c", script], check=True)


def test_build_fatbin_compiles_once_and_caches(nvcc: kernel_build.Compiler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = tmp_path / "kernels"  # the sources alone, without the fatbin an install may have put beside them
    sources.mkdir()
    for path in [*kernel_build.KERNEL_DIR.glob("*.cu"), *kernel_build.KERNEL_DIR.glob("*.cuh")]:
        shutil.copy(path, sources)
    monkeypatch.setattr(kernel_build, "KERNEL_DIR", sources)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = kernel_build.build_fatbin()
    assert first.parent == tmp_path / "cache" / "maskrt" and first.stat().st_size > 0
    stamp = first.stat().st_mtime_ns
    assert kernel_build.build_fatbin() == first and first.stat().st_mtime_ns == stamp
    assert kernel_build.build_fatbin(force=True) == first
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary file left behind


@pytest.fixture
def nvrtc_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine without nvcc (a runtime-only install): NVRTC compiles, into a cache of this test's own."""
    pytest.importorskip("cuda.bindings.nvrtc", reason="needs cuda-python: pip install '.[test]'")
    sources = tmp_path / "kernels"
    sources.mkdir()
    for path in [*kernel_build.KERNEL_DIR.glob("*.cu"), *kernel_build.KERNEL_DIR.glob("*.cuh")]:
        shutil.copy(path, sources)
    monkeypatch.setattr(kernel_build, "KERNEL_DIR", sources)
    monkeypatch.setattr(kernel_build, "find_nvcc", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "maskrt"


def test_nvrtc_builds_a_cubin_for_the_gpu_it_runs_on(nvrtc_only: Path) -> None:
    """A driver loads the SASS of any compiler of its CUDA major version but PTX only from one no newer than itself
    (pip's NVRTC 12.9 on JetPack 6.0's 12.2 driver), so NVRTC compiles a CUBIN for the GPU, as NVIDIA's plugin
    samples (samples/python/plugin_utils.py, KernelHelper) do."""
    compiler = kernel_build.find_compiler()
    assert compiler.kind == "nvrtc" and 87 in compiler.architectures
    image = kernel_build.build_fatbin(architecture=87)
    assert image.parent == nvrtc_only and image.name.endswith("-sm_87.cubin")
    assert image.read_bytes()[:4] == b"\x7fELF"
    assert kernel_build.build_fatbin(architecture=87) == image  # cached
    assert kernel_build.describe(compiler, "sm_87").endswith("a CUBIN for this GPU (sm_87)")


def test_nvrtc_targets_a_newer_gpu_with_ptx_and_refuses_an_older_one(nvrtc_only: Path) -> None:
    compiler = kernel_build.find_compiler()
    newest = max(compiler.architectures)
    assert kernel_build.nvrtc_target(compiler, newest + 10) == f"compute_{newest}"  # a GPU newer than this NVRTC
    image = kernel_build.build_fatbin(architecture=newest + 10)
    assert image.suffix == ".ptx" and b".target sm_" in image.read_bytes()
    oldest = min(compiler.architectures)
    with pytest.raises(OSError, match=rf"cannot compile for this GPU's sm_{oldest - 1}"):
        kernel_build.nvrtc_target(compiler, oldest - 1)
    if 72 not in compiler.architectures:  # NVRTC 13: Xavier is named, with what builds for it
        with pytest.raises(OSError, match="CUDA 13 dropped Xavier.*nvidia-cuda-nvrtc-cu12"):
            kernel_build.build_fatbin(architecture=72)


def test_nvrtc_without_a_gpu_to_compile_for_says_so(nvrtc_only: Path) -> None:
    """`maskrt plugins build` on a machine without nvcc compiles for GPU 0; without a GPU (here) that is one OSError."""
    with pytest.raises(OSError, match="compiles maskrt's kernels for the GPU they run on, and no GPU could be read here"):
        kernel_build.build_fatbin()


def test_a_missing_nvrtc_library_is_an_oserror_with_what_installs_it(no_kernel_compiler: None) -> None:
    """cuda-python's DynamicLibNotFoundError once escaped find_compiler, inside TensorRT's on_shape_change, where
    TensorRT prints only "Exception thrown from on_shape_change()"."""
    with pytest.raises(OSError, match=r"needs nvcc .* or NVRTC, and neither is here .*nvidia-cuda-nvrtc-cu12>=12.6,<13"):
        kernel_build.find_compiler()
