"""maskrt.plugins.cuda.check_cuda, the one check of cuda-python's results, against what cuda-python itself returns.

The oracle is cuda-python (cuda-bindings): its real calls, made here without a GPU or a driver. NVRTC runs whole on
a CPU, so its failures are real results; the runtime API answers cudaErrorInsufficientDriver without a driver; the
driver API cannot load libcuda and raises instead, as it does on a machine without NVIDIA's driver. What counts as a
failure and what comes back follows `checkCudaErrors` of NVIDIA's cuda-python examples
(cuda_bindings/examples/common/helper_cuda.py): a status whose value is not 0 fails; no value gives None, one value
that value, several the tuple of them.
"""

from __future__ import annotations

import pytest

from maskrt.plugins.cuda import CudaError, check_cuda, error_name, loading

nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="needs cuda-python: pip install '.[test]'")
from cuda.bindings import driver, runtime  # noqa: E402


@pytest.fixture
def program() -> object:
    created = nvrtc.nvrtcCreateProgram(b"__global__ void broken( {", b"broken.cu", 0, [], [])
    handle = check_cuda(created, "creating a program")
    yield handle
    nvrtc.nvrtcDestroyProgram(handle)


def test_a_successful_call_gives_its_values_as_nvidias_check_does() -> None:
    version = nvrtc.nvrtcVersion()  # (NVRTC_SUCCESS, major, minor): several values come back as a tuple
    assert len(version) == 3 and version[0] == nvrtc.nvrtcResult.NVRTC_SUCCESS
    assert check_cuda(version, "reading NVRTC's version") == version[1:]
    archs = nvrtc.nvrtcGetSupportedArchs()  # one value: that value
    assert check_cuda(archs, "listing architectures") == archs[1] and 75 in archs[1]
    assert check_cuda(runtime.cudaDriverGetVersion(), "reading the driver's version") == 0  # no driver: version 0


def test_a_failed_nvrtc_call_is_named_as_nvrtc_names_it(program: object) -> None:
    compiled = nvrtc.nvrtcCompileProgram(program, 0, [])
    assert compiled == (nvrtc.nvrtcResult.NVRTC_ERROR_COMPILATION,)  # a status alone, in a tuple
    with pytest.raises(CudaError, match=r"^compiling the kernels: NVRTC_ERROR_COMPILATION \(error 6\)$"):
        check_cuda(compiled, "compiling the kernels")
    options = nvrtc.nvrtcCompileProgram(program, 1, [b"--no-such-option"])
    with pytest.raises(CudaError, match="NVRTC_ERROR_INVALID_OPTION"):
        check_cuda(options, "compiling with a bad option")


def test_a_failed_runtime_call_is_named_as_the_runtime_names_it() -> None:
    freed = runtime.cudaFree(0)  # no driver here
    assert freed == (runtime.cudaError_t.cudaErrorInsufficientDriver,)
    with pytest.raises(CudaError, match=r"^initialising: cudaErrorInsufficientDriver: .* \(error 35\)$"):
        check_cuda(freed, "initialising")
    counted = runtime.cudaGetDeviceCount()  # a failed call with a value slot: the status decides
    assert counted[0] == runtime.cudaError_t.cudaErrorInsufficientDriver and len(counted) == 2
    with pytest.raises(CudaError, match="cudaErrorInsufficientDriver"):
        check_cuda(counted, "counting GPUs")


def test_a_driver_status_is_named_even_when_the_driver_cannot_be_loaded() -> None:
    """cuGetErrorName needs libcuda; without it the enum's own name (the same C name) says what failed."""
    status = driver.CUresult.CUDA_ERROR_NO_DEVICE
    assert error_name(status) == "CUDA_ERROR_NO_DEVICE"
    with pytest.raises(CudaError, match=r"^finding GPU 0: CUDA_ERROR_NO_DEVICE \(error 100\)$"):
        check_cuda((status,), "finding GPU 0")
    assert check_cuda((driver.CUresult.CUDA_SUCCESS, 7), "a value") == 7


def test_a_missing_driver_library_is_one_clear_error() -> None:
    """Without NVIDIA's driver, cuda-python's driver calls raise (cuda.pathfinder's DynamicLibNotFoundError, a
    RuntimeError) instead of returning a status: `loading` names the library."""
    with pytest.raises(RuntimeError) as raised:
        driver.cuInit(0)
    assert not isinstance(raised.value, CudaError)
    with pytest.raises(CudaError, match=r"^the NVIDIA driver library \(libcuda\) could not be loaded \(\w+: .*\); install it$"):
        with loading("the NVIDIA driver library (libcuda)", "install it"):
            driver.cuInit(0)


def test_a_result_wrapped_in_another_tuple_is_refused_not_read_as_a_failure() -> None:
    """`check((call(),))` once read every call as failed (convert/build.py's GPU name): it is a TypeError now."""
    freed = runtime.cudaDriverGetVersion()
    for wrong in [(freed,), freed[0], None, (), (0,), (True,)]:
        with pytest.raises(TypeError, match="check_cuda takes a cuda-python call's result"):
            check_cuda(wrong, "reading the version")  # type: ignore[arg-type]


def test_the_engine_build_reads_the_gpu_from_cuda_pythons_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """convert/build.py records the GPU in model.engine.json from cuda-python's results as the calls return them: a
    status alone for cuInit (wrapping it again made every build record "gpu": null), a status and a value for the
    others."""
    from maskrt.convert import build

    ok = driver.CUresult.CUDA_SUCCESS
    attribute = driver.CUdevice_attribute
    capability = {attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: 8, attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: 7}
    monkeypatch.setattr(driver, "cuInit", lambda flags: (ok,))
    monkeypatch.setattr(driver, "cuDeviceGet", lambda ordinal: (ok, driver.CUdevice(ordinal)))
    monkeypatch.setattr(driver, "cuDeviceGetName", lambda length, device: (ok, b"Orin".ljust(length, b"\0")))
    monkeypatch.setattr(driver, "cuDeviceGetAttribute", lambda which, device: (ok, capability[which]))
    assert build._gpu() == ("Orin", "87")
