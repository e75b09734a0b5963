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

from maskrt.plugins import build


@pytest.fixture(scope="module")
def nvcc() -> build.Compiler:
    path = build.find_nvcc()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have nvcc (the CUDA toolkit) to prove the kernels compile")
        pytest.skip("nvcc not found")
    return build.find_compiler()


def test_every_source_compiles_for_every_architecture_nvcc_supports(nvcc: build.Compiler) -> None:
    missing = set(build.ARCHITECTURES) - set(nvcc.architectures)
    assert missing <= {72}, f"{nvcc.identity} cannot build {missing}"  # CUDA 13 dropped sm_72: see the NVRTC 12 test
    with ThreadPoolExecutor(max_workers=2) as pool:
        images = list(
            pool.map(lambda name: build.nvcc_fatbin(nvcc.path, nvcc.architectures, build.KERNEL_DIR / name), build.SOURCES)
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
from maskrt.plugins import build
major, minor, archs = build._nvrtc_info()
assert major == 12 and 72 in archs, (major, minor)
for name in build.SOURCES:
    image = build.nvrtc_compile(f'#include "{{name}}"\\n', "sm_72")
    assert image[:4] == b"\\x7fELF", name
"""
    subprocess.run([sys.executable, "-c", script], check=True)


def test_build_fatbin_compiles_once_and_caches(nvcc: build.Compiler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = tmp_path / "kernels"  # the sources alone, without the fatbin an install may have put beside them
    sources.mkdir()
    for path in [*build.KERNEL_DIR.glob("*.cu"), *build.KERNEL_DIR.glob("*.cuh")]:
        shutil.copy(path, sources)
    monkeypatch.setattr(build, "KERNEL_DIR", sources)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = build.build_fatbin()
    assert first.parent == tmp_path / "cache" / "maskrt" and first.stat().st_size > 0
    stamp = first.stat().st_mtime_ns
    assert build.build_fatbin() == first and first.stat().st_mtime_ns == stamp
    assert build.build_fatbin(force=True) == first
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary file left behind
