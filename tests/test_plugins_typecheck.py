"""mypy checks every TensorRT- and pycuda-facing line of maskrt (the plugins, the engine build, the engine runtime and
its GPU mask paste, the doctor) against tensorrt-stubs and maskrt's own stub of the pycuda it calls (runtime/pycuda_stubs), since
CI can install neither."""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = [
    "maskrt.plugins",
    "maskrt.plugins.tensorrt_plugins",
    "maskrt.plugins.launch",
    "maskrt.plugins.kernel_build",
    "maskrt.plugins.cuda",
    "maskrt.plugins.failures",
    "maskrt.convert.build",
    "maskrt.runtime.engine",
    "maskrt.runtime.tensorrt_log",
    "maskrt.runtime.gpu_paste",
    "maskrt.check.engines",
    "maskrt.runtime.backends",
    "maskrt.runtime.predictor",
    "maskrt.contracts.tensorrt",
    "maskrt.runtime.doctor",
    "maskrt.runtime.kernel_checks",
]
PYCUDA_STUBS = REPO / "runtime" / "pycuda_stubs"


MYPY_CONFIG = """\
[mypy]
python_version = 3.11
strict = True
ignore_missing_imports = True
[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
ignore_errors = True
[mypy-pycuda,pycuda.*]
ignore_missing_imports = False
"""


def _stubs(target: Path) -> Path:
    """tensorrt-stubs, copied where mypy looks first (the wheel ships no py.typed marker for `tensorrt`), with the
    generator's slips repaired: parameters named `in` (a Python keyword), a required parameter after defaulted ones,
    `bool` annotations that resolve to the module's `tensorrt.bool` data type, and str arguments that pybind converts
    to FallbackString implicitly."""
    try:
        files = importlib.metadata.files("tensorrt-stubs") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("tensorrt-stubs is not installed: pip install --no-deps tensorrt-stubs==10.13.0.35.1")
    for file in files:
        if file.suffix == ".pyi" and file.parts[0] in ("tensorrt", "tensorrt_bindings"):
            text = Path(str(file.locate())).read_text()
            text = re.sub(r"\bin: list\[", "inputs: list[", text)
            text = text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = ...)")
            text = "import builtins\n" + re.sub(r"(->\s*|:\s*)bool\b", r"\1builtins.bool", text)
            text = re.sub(r"(\w): FallbackString", r"\1: str | FallbackString", text)
            destination = target / file
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_text(text)
    return target


def test_tensorrt_glue_type_checks_against_tensorrt_stubs(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    stubs = _stubs(tmp_path / "stubs")
    # maskrt as the source tree, not an installed copy.
    package_root = tmp_path / "src"
    package_root.mkdir()
    (package_root / "maskrt").symlink_to(REPO, target_is_directory=True)
    config = tmp_path / "mypy.ini"
    config.write_text(MYPY_CONFIG)
    arguments = ["--config-file", str(config), "--no-incremental", "--cache-dir", str(tmp_path / "cache")]
    for module in MODULES:
        arguments += ["-m", module]
    previous = os.environ.get("MYPYPATH")
    os.environ["MYPYPATH"] = os.pathsep.join([str(package_root), str(stubs), str(PYCUDA_STUBS)])
    try:
        report, errors, status = api.run(arguments)
    finally:
        if previous is None:
            del os.environ["MYPYPATH"]
        else:
            os.environ["MYPYPATH"] = previous
    assert status == 0, report + errors
