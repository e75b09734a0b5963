"""`maskrt doctor`: what this machine can do for maskrt, and the proof of it that the edge install can give.

The facts: Python; the platform (on a Jetson its module and its L4T and JetPack release, read as NVIDIA documents it:
/etc/nv_tegra_release, /proc/device-tree/model, the nvidia-l4t-core package); TensorRT and what it builds (read from
its module, contracts/tensorrt.py); the GPU, its compute capability and memory, and the CUDA driver; pycuda and
cuda-python; nvcc and NVRTC, which compile the kernels; ONNX Runtime's providers. A piece that is missing or broken
comes with one line saying what it is and what installs it, and everything else is still read.

The proof, where a GPU and both CUDA bindings are here: the kernels compiled for this GPU and loaded, then each plugin
kernel against the CPU reference and the GPU mask paste against the CPU paste (runtime/kernel_checks.py). Engines are
built and compared by maskrt.convert.engine_checks, which needs the conversion install.

TensorRT, pycuda and cuda-python are imported by the functions that read them, never by importing this module.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

# What installs the pieces the doctor looks for, in the words of its one-line reports.
DRIVER_HINT = "install the NVIDIA driver (on a Jetson it is part of JetPack's L4T; on x86 the distribution's nvidia-driver)"
TENSORRT_HINT = (
    "on a Jetson TensorRT comes with JetPack (sudo apt install nvidia-jetpack; a venv sees it with "
    "--system-site-packages); on x86, pip install 'maskrt[tensorrt]'"
)
PYCUDA_HINT = "pip install pycuda (it compiles against the CUDA toolkit: put nvcc on PATH first)"
CUDA_PYTHON_HINT = "pip install 'cuda-bindings>=12.6,<13'"
# Jetson Linux (L4T) releases and the JetPack each one is part of, from NVIDIA's JetPack release notes.
JETPACK_OF_L4T = {
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "35.6.1": "5.1.5",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
    "38.2.0": "7.0",
    "38.2.1": "7.0",
    "38.4.0": "7.1",
}


@dataclass(frozen=True)
class Fact:
    """One thing read off this machine. `missing` (one line) says what is missing or broken and what installs it."""

    name: str
    value: str
    missing: str = ""


@dataclass(frozen=True)
class Check:
    """One proof: passed, failed, or not tested here (passed None) with the reason in `detail`."""

    name: str
    passed: bool | None
    detail: str


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: int  # 87 for sm_87
    memory_bytes: int
    driver: str  # the CUDA version the driver supports, "12.2"


@dataclass
class Report:
    facts: list[Fact] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.passed is False]

    @property
    def not_tested(self) -> list[Check]:
        return [check for check in self.checks if check.passed is None]

    def as_json(self) -> dict[str, Any]:
        return {
            "facts": [asdict(fact) for fact in self.facts],
            "checks": [asdict(check) for check in self.checks],
            "missing": [fact.missing for fact in self.facts if fact.missing],
            "not_tested": [{"name": check.name, "why": check.detail} for check in self.not_tested],
            "passed": not self.failed,
        }


@dataclass(frozen=True)
class Machine:
    """What the checks need to know of the facts."""

    gpu: Gpu | None
    gpu_problem: str  # why there is no GPU to test on, when there is none
    pycuda: bool
    cuda_python: bool


def read_machine(root: Path = Path("/"), l4t_package: Callable[[], str | None] | None = None) -> tuple[list[Fact], Machine]:
    """Every fact, and what the checks need of them. `root` and `l4t_package` are where the platform is read from
    (the root file system, and the nvidia-l4t-core package's version from dpkg)."""
    gpu, gpu_problem = read_gpu()
    pycuda_fact, pycuda_ready = _pycuda()
    cuda_python_fact, cuda_python_ready = _cuda_python()
    facts = [
        Fact("maskrt", _distribution_version("maskrt") or "not installed as a package (run from its source)"),
        Fact("Python", f"{platform.python_version()} ({sys.executable})"),
        _safely("platform", lambda: platform_fact(root, l4t_package or _l4t_package_version)),
        _safely("TensorRT", tensorrt_fact),
        _gpu_fact(gpu, gpu_problem),
        _driver_fact(gpu),
        pycuda_fact,
        cuda_python_fact,
        _safely("kernel compiler", compiler_fact),
        _safely("ONNX Runtime", onnxruntime_fact),
    ]
    return facts, Machine(gpu, gpu_problem, pycuda_ready, cuda_python_ready)


def platform_fact(root: Path, l4t_package: Callable[[], str | None]) -> Fact:
    """The Jetson module and its L4T and JetPack release, or the operating system and machine of anything else."""
    model = _read_text(root / "proc/device-tree/model").rstrip("\0").strip()
    l4t = l4t_release(_read_text(root / "etc/nv_tegra_release"))
    if l4t is None and ("jetson" in model.lower() or (root / "etc/nv_tegra_release").exists()):
        version = l4t_package()  # "36.4.3-20250107174145": JetPack 6 containers may have no nv_tegra_release
        l4t = version.split("-")[0] if version else None
    system = _os_name(root) or f"{platform.system()} {platform.release()}"
    if l4t is None and "jetson" not in model.lower():
        return Fact("platform", f"{system}, {platform.machine()} (not a Jetson)")
    jetpack = JETPACK_OF_L4T.get(l4t or "")
    release = f"L4T R{l4t}" if l4t else "L4T release unreadable"
    release += f" (JetPack {jetpack})" if jetpack else " (a JetPack maskrt does not know)" if l4t else ""
    return Fact("platform", f"{model or 'a Jetson'}: {release}, {system}, {platform.machine()}")


def l4t_release(text: str) -> str | None:
    """"35.4.1" from /etc/nv_tegra_release's "# R35 (release), REVISION: 4.1, GCID: ..."; None when not there."""
    found = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)", text)
    if found is None:
        return None
    return f"{found.group(1)}.{found.group(2)}.{found.group(3)}"


def tensorrt_fact() -> Fact:
    """TensorRT's version and what it builds: plugin modes, precisions (from what), INT8 calibrators."""
    from maskrt.contracts.tensorrt import installed_tensorrt

    tensorrt = installed_tensorrt()
    if tensorrt is None:
        return Fact("TensorRT", "not installed", f"TensorRT: not installed: {TENSORRT_HINT}")
    if not tensorrt.builder:
        return Fact("TensorRT", f"{tensorrt.version}, a runtime-only install: it runs engines and builds none")
    builds = "; ".join(f"{name} from the {what}" for name, what in tensorrt.precision_builds().items())
    return Fact(
        "TensorRT",
        f"{tensorrt.version}: builds --plugins {', '.join(tensorrt.plugin_modes)}; {builds}; "
        f"INT8 calibrators {', '.join(tensorrt.calibrators)}",
    )


def read_gpu() -> tuple[Gpu | None, str]:
    """GPU 0 through cuda-python's driver API, or pycuda's where cuda-python is not installed; else None and why."""
    try:
        from cuda.bindings import driver  # noqa: F401  (which binding reads the GPU)
    except ImportError:
        return _gpu_from_pycuda()
    return _gpu_from_cuda_python()


def _gpu_from_cuda_python() -> tuple[Gpu | None, str]:
    from cuda.bindings import driver

    from maskrt.plugins.cuda import CudaError, check_cuda, loading

    try:
        with loading("the NVIDIA driver library (libcuda)", DRIVER_HINT):
            initialised = driver.cuInit(0)
        check_cuda(initialised, "initialising CUDA")
        if check_cuda(driver.cuDeviceGetCount(), "counting GPUs") == 0:
            return None, "no CUDA GPU"
        device = check_cuda(driver.cuDeviceGet(0), "finding GPU 0")
        name = check_cuda(driver.cuDeviceGetName(256, device), "reading GPU 0's name")
        attribute = driver.CUdevice_attribute
        major = check_cuda(driver.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device), "reading GPU 0")
        minor = check_cuda(driver.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device), "reading GPU 0")
        memory = check_cuda(driver.cuDeviceTotalMem(device), "reading GPU 0's memory")
        version = int(check_cuda(driver.cuDriverGetVersion(), "reading the CUDA driver's version"))
    except CudaError as error:
        return None, str(error)
    text = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return Gpu(text, int(major) * 10 + int(minor), int(memory), _cuda_version(version)), ""


def _gpu_from_pycuda() -> tuple[Gpu | None, str]:
    if _distribution_version("pycuda") is None:
        return None, "not read: neither cuda-python nor pycuda is installed (their lines say what installs them)"
    try:
        import pycuda.driver as cuda
    except ImportError as error:  # its extension cannot load the driver library
        return None, f"pycuda cannot load the NVIDIA driver ({error}): {DRIVER_HINT}"
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            return None, "no CUDA GPU"
        device = cuda.Device(0)
        major, minor = device.compute_capability()
        gpu = Gpu(device.name(), major * 10 + minor, device.total_memory(), _cuda_version(cuda.get_driver_version()))
    except cuda.Error as error:
        return None, f"CUDA could not be initialised ({error}): {DRIVER_HINT}"
    return gpu, ""


def _gpu_fact(gpu: Gpu | None, problem: str) -> Fact:
    if gpu is None:
        return Fact("GPU", "none usable", f"GPU: {problem}")
    return Fact("GPU", f"{gpu.name}, sm_{gpu.compute_capability}, {gpu.memory_bytes / 2**30:.1f} GiB")


def _driver_fact(gpu: Gpu | None) -> Fact:
    if gpu is None:
        return Fact("CUDA driver", "not read (no usable GPU)")
    return Fact("CUDA driver", f"supports CUDA {gpu.driver}")


def _pycuda() -> tuple[Fact, bool]:
    version = _distribution_version("pycuda")
    if version is None:
        return Fact("pycuda", "not installed", f"pycuda (runs engines): not installed: {PYCUDA_HINT}"), False
    try:
        import pycuda.driver  # noqa: F401
    except ImportError as error:
        return Fact("pycuda", f"{version}, cannot be imported", f"pycuda {version}: cannot be imported ({error}): {PYCUDA_HINT}"), False
    return Fact("pycuda", version), True


def _cuda_python() -> tuple[Fact, bool]:
    version = _distribution_version("cuda-bindings") or _distribution_version("cuda-python")
    try:
        from cuda.bindings import driver  # noqa: F401
    except ImportError as error:
        if sys.version_info < (3, 9):
            # cuda-bindings has no release for 3.8: JetPack 5.1's engines run with pycuda and paste on the CPU.
            return Fact("cuda-python", "none for Python 3.8: engines run with pycuda, masks are pasted on the CPU"), False
        found = f"{version}, cannot be imported ({error})" if version else "not installed"
        return Fact("cuda-python", found, f"cuda-python (maskrt's kernels): {found}: {CUDA_PYTHON_HINT}"), False
    return Fact("cuda-python", f"cuda-bindings {version}" if version else "installed"), True


def compiler_fact() -> Fact:
    """nvcc and NVRTC, and what each builds; the missing line only when neither can compile the kernels."""
    from maskrt.plugins.kernel_build import describe, find_nvcc, nvcc_compiler, nvrtc_compiler

    found = []
    nvcc = find_nvcc()
    if nvcc is not None:
        try:
            found.append(describe(nvcc_compiler(nvcc)))
        except OSError as error:
            found.append(f"nvcc at {nvcc} does not run ({' '.join(str(error).split())[:200]})")
    try:
        nvrtc = nvrtc_compiler()
    except OSError as error:
        if not found:
            return Fact("kernel compiler", "none", f"kernel compiler: neither nvcc nor NVRTC: {error}")
        found.append("NVRTC not usable (nvcc compiles instead)")
    else:
        found.append(f"{nvrtc.identity} (sm_{nvrtc.architectures[0]} to sm_{nvrtc.architectures[-1]})")
    return Fact("kernel compiler", "; ".join(found))


def onnxruntime_fact() -> Fact:
    try:
        import onnxruntime as ort
    except ImportError as error:
        return Fact("ONNX Runtime", "cannot be imported", f"ONNX Runtime: cannot be imported ({error}): pip install maskrt again")
    extensions = _distribution_version("onnxruntime-extensions")
    value = f"{ort.__version__}, providers {', '.join(ort.get_available_providers())}"
    if extensions is None:
        return Fact("ONNX Runtime", value, "onnxruntime-extensions (runs --plugins maskrt graphs): not installed: pip install maskrt again")
    return Fact("ONNX Runtime", f"{value}; onnxruntime-extensions {extensions}")


def gpu_checks(machine: Machine) -> list[Check]:
    """The kernels compiled for this GPU and loaded, each kernel against the CPU, the GPU paste against the CPU's;
    one "not tested here" for each when there is no GPU or no CUDA binding to drive it."""
    names = ["the kernels compiled for this GPU", "MultilevelRoIAlign and BatchedNMS kernels against the CPU reference",
             "the GPU mask paste against the CPU paste"]
    why = _why_no_gpu_tests(machine)
    if why:
        return [Check(name, None, why) for name in names]
    import pycuda.driver as cuda

    from maskrt.plugins import launch
    from maskrt.plugins.kernel_build import build_fatbin
    from maskrt.runtime.kernel_checks import check_kernels, gpu_device

    assert machine.gpu is not None
    architecture = machine.gpu.compute_capability
    try:
        with gpu_device() as device:
            image = build_fatbin(architecture=architecture)
            launch.load_kernels()
            checks = [Check(names[0], True, f"{image.name} loaded for sm_{architecture}")]
            checks += [Check(result.name, result.passed, result.detail) for result in check_kernels(device)]
    except (OSError, RuntimeError, cuda.Error) as error:  # no compiler for this GPU; cuda-python's or pycuda's CUDA error
        return [Check(names[0], False, " ".join(str(error).split())[:400])] + [
            Check(name, None, "the kernels could not be loaded") for name in names[1:]
        ]
    return checks


def _why_no_gpu_tests(machine: Machine) -> str:
    """Why the GPU cannot be tested here, in a few words (the missing lines say what installs it); "" when it can."""
    if machine.gpu is None:
        return "no GPU"
    if not machine.pycuda:
        return "no pycuda"
    if not machine.cuda_python:
        return "no cuda-python" + (" for Python 3.8" if sys.version_info < (3, 9) else "")
    return ""


def _safely(name: str, read: Callable[[], Fact]) -> Fact:
    """`read()`, or a Fact saying it could not be read: one broken piece never hides the others."""
    try:
        return read()
    except Exception as error:  # noqa: BLE001 (whatever a broken install raises, the rest is still reported)
        what = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        return Fact(name, "could not be read", f"{name}: could not be read ({what})")


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cuda_version(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _os_name(root: Path) -> str:
    found = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', _read_text(root / "etc/os-release"), re.MULTILINE)
    return found.group(1) if found else ""


def _l4t_package_version() -> str | None:
    """The nvidia-l4t-core package's version, as NVIDIA's docs read it (dpkg-query); None without dpkg or it."""
    try:
        done = subprocess.run(
            ["dpkg-query", "--showformat=${Version}", "--show", "nvidia-l4t-core"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 or not done.stdout.strip():
        return None
    return done.stdout.strip()


def print_report(report: Report, console: Console) -> None:
    """The facts and the checks as tables, then one line per missing piece and one list of what was not tested."""
    facts = Table(title="maskrt doctor: this machine", title_justify="left", show_header=False)
    facts.add_column("what", style="bold")
    facts.add_column("found")
    for fact in report.facts:
        facts.add_row(fact.name, Text(fact.value, style="yellow" if fact.missing else ""))
    console.print(facts)
    tested = [check for check in report.checks if check.passed is not None]
    if tested:
        checks = Table(title="maskrt doctor: proof on this machine", title_justify="left")
        checks.add_column("check", style="bold")
        checks.add_column("result")
        checks.add_column("detail")
        for check in tested:
            result = Text("passed", style="green") if check.passed else Text("FAILED", style="bold red")
            checks.add_row(check.name, result, check.detail)
        console.print(checks)
    for fact in report.facts:
        if fact.missing:
            console.print(Text.assemble(("missing: ", "bold yellow"), fact.missing), soft_wrap=True)
    if report.not_tested:
        console.print(Text.assemble(("not tested here: ", "bold yellow"), not_tested_line(report)), soft_wrap=True)
    failed = report.failed
    if failed:
        console.print(Text.assemble(("failed: ", "bold red"), ", ".join(check.name for check in failed)), soft_wrap=True)


def not_tested_line(report: Report) -> str:
    """What was not tested, grouped by why: "a, b (no GPU); c (no TensorRT)"."""
    by_reason: dict[str, list[str]] = {}
    for check in report.not_tested:
        by_reason.setdefault(check.detail, []).append(check.name)
    return "; ".join(f"{', '.join(names)} ({reason})" for reason, names in by_reason.items())
