"""`maskrt doctor`: the facts of this machine, the one-line reports of a missing piece, the Jetson's release as NVIDIA
writes it, the kernel checks run on the CPU harness (and on a GPU where there is one), and the engines' comparison
with ONNX Runtime."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from maskrt.calib.images import read_image_ids
from maskrt.calib.shapes import write_dataset
from maskrt.cli.main import main as maskrt
from maskrt.convert.engine_checks import Answers, compare_answers, run_predictor
from maskrt.runtime import doctor, kernel_checks
from maskrt.runtime.kernel_checks import check_kernels
from maskrt.runtime.predictor import Detections, Predictor

from cpu_harness import HarnessDevice, build_harness
from tensorrt_support import LEAN, RTX, run_python

GPU, GPU_PROBLEM = doctor.read_gpu()
needs_no_gpu = pytest.mark.skipif(GPU is not None, reason="a GPU is here: the GPU tests cover it")


@needs_no_gpu
def test_on_this_machine_it_exits_0_prints_the_table_and_lists_what_it_could_not_test(capsys: pytest.CaptureFixture[str]) -> None:
    assert maskrt(["doctor"]) == 0
    printed = capsys.readouterr().err
    assert "maskrt doctor: this machine" in printed
    for name in ("Python", "platform", "TensorRT", "GPU", "CUDA driver", "pycuda", "cuda-python", "kernel compiler", "ONNX Runtime"):
        assert f"│ {name} " in printed
    (line,) = [line for line in printed.splitlines() if line.startswith("not tested here: ")]
    assert "the kernels compiled for this GPU" in line and "the GPU mask paste against the CPU paste" in line
    assert "(no GPU)" in line and "shapes-demo engines" in line


@needs_no_gpu
def test_json_gives_the_same_facts_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert maskrt(["doctor"]) == 0
    table = capsys.readouterr().err
    assert maskrt(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [fact["name"] for fact in report["facts"]][:3] == ["maskrt", "Python", "platform"]
    for fact in report["facts"]:
        assert fact["value"] in table
    assert report["passed"] is True and report["missing"] and report["not_tested"]
    assert {item["why"] for item in report["not_tested"]} >= {"no GPU"}


@needs_no_gpu
def test_a_missing_libcuda_is_named_with_what_installs_it(capsys: pytest.CaptureFixture[str]) -> None:
    """This machine's own broken CUDA: cuda-python is installed, the driver library is not."""
    pytest.importorskip("cuda.bindings.driver", reason="needs cuda-python: pip install '.[test]'")
    assert GPU is None and "the NVIDIA driver library (libcuda) could not be loaded" in GPU_PROBLEM
    assert maskrt(["doctor"]) == 0
    missing = [line for line in capsys.readouterr().err.splitlines() if line.startswith("missing: GPU: ")]
    assert len(missing) == 1 and "libcuda" in missing[0] and doctor.DRIVER_HINT in missing[0]


def test_a_missing_nvrtc_is_named_with_what_installs_it_and_the_rest_is_still_read(
    no_kernel_compiler: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """No nvcc, and cuda-python's own failure to find libnvrtc."""
    fact = doctor.compiler_fact()
    assert fact.value == "none"
    assert "NVRTC (libnvrtc) could not be loaded" in fact.missing and "nvidia-cuda-nvrtc-cu12>=12.6,<13" in fact.missing
    code = maskrt(["doctor", "--no-engines"])
    printed = capsys.readouterr().err
    (line,) = [line for line in printed.splitlines() if line.startswith("missing: kernel compiler: ")]
    assert "libnvrtc" in line and "pip install 'nvidia-cuda-nvrtc-cu12>=12.6,<13'" in line
    assert "│ ONNX Runtime " in printed and "│ TensorRT " in printed
    assert code == (0 if GPU is None else 1)  # on a GPU, the kernels cannot compile: that check fails


def _root(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_a_jetson_is_named_with_its_l4t_and_jetpack_release(tmp_path: Path) -> None:
    root = _root(
        tmp_path,
        {
            "etc/nv_tegra_release": "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n",
            "proc/device-tree/model": "NVIDIA Jetson AGX Orin Developer Kit\0",
            "etc/os-release": 'NAME="Ubuntu"\nPRETTY_NAME="Ubuntu 20.04.6 LTS"\n',
        },
    )
    fact = doctor.platform_fact(root, lambda: None)
    assert fact.value.startswith("NVIDIA Jetson AGX Orin Developer Kit: L4T R35.4.1 (JetPack 5.1.2), Ubuntu 20.04.6 LTS")


def test_a_jetson_without_nv_tegra_release_is_read_from_the_l4t_package(tmp_path: Path) -> None:
    """JetPack 6 containers may lack /etc/nv_tegra_release: dpkg's nvidia-l4t-core version says the release."""
    root = _root(tmp_path, {"proc/device-tree/model": "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\0"})
    fact = doctor.platform_fact(root, lambda: "36.4.3-20250107174145")
    assert "Orin Nano" in fact.value and "L4T R36.4.3 (JetPack 6.2)" in fact.value


def test_anything_else_is_named_by_its_operating_system(tmp_path: Path) -> None:
    root = _root(tmp_path, {"etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'})
    assert doctor.platform_fact(root, lambda: None).value.startswith("Debian GNU/Linux 12 (bookworm), ")
    assert doctor.platform_fact(root, lambda: None).value.endswith("(not a Jetson)")


@pytest.mark.parametrize("standin", ["rtx", "lean"])
def test_what_a_real_tensorrt_module_builds(standin: str, tmp_path: Path) -> None:
    code = "from maskrt.runtime.doctor import tensorrt_fact\nprint(tensorrt_fact().value)"
    result = run_python({"lean": LEAN, "rtx": RTX}[standin], code, tmp_path)
    assert result.returncode == 0, result.stderr
    if standin == "lean":
        assert "a runtime-only install: it runs engines and builds none" in result.stdout
    else:  # TensorRT 11's typing: strongly typed graphs, no legacy calibrator; IPluginV3, so both plugin modes
        assert "builds --plugins maskrt, native; fp32 from the deploy graph, strongly typed" in result.stdout
        assert "int8 from the qdq graph, strongly typed; INT8 calibrators qdq\n" in result.stdout


def test_tensorrt_8_and_10_build_from_the_weak_graphs_with_flags() -> None:
    from maskrt.contracts.tensorrt import TensorRT

    tensorrt = TensorRT("8.5.2.2", True, True, False, True, False, False, False)
    assert tensorrt.plugin_modes == ("native",) and tensorrt.calibrators == ("qdq", "legacy")
    assert tensorrt.precision_builds()["int8"] == "qdq graph + FP16 flag + INT8 flag"


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], HarnessDevice]:
    run = build_harness(tmp_path_factory.mktemp("harness"))
    return lambda: HarnessDevice(run)


def test_the_kernel_checks_pass_where_the_kernels_answer_as_the_cpu(
    harness: Callable[[], HarnessDevice], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The doctor's cases and comparisons, with the kernels' sources run on CPU threads in place of the GPU (its
    pastes into smaller images: a CPU thread per GPU thread pastes 640x480 slowly)."""
    monkeypatch.setattr(kernel_checks, "PASTE_CASES", (((150, 200), 40), ((61, 83), 24)))
    results = check_kernels(harness())
    assert [r.name for r in results if not r.passed] == []
    assert len(results) == 5 + 7 + 2


def test_the_kernel_checks_fail_where_a_kernel_writes_nothing(harness: Callable[[], HarnessDevice]) -> None:
    """The sentinels each output buffer starts with show an output no kernel wrote; an empty paste fails its IoU."""
    device = harness()
    device.run = lambda launches: None  # type: ignore[method-assign]
    device.paste = lambda masks, size, rows, boxes, image: np.zeros((len(rows), *image), bool)  # type: ignore[method-assign]
    results = check_kernels(device)
    # "nothing passes" keeps nothing, so only its num and rows, never written, differ from the sentinels; all others fail.
    assert all(not r.passed for r in results if "nothing passes" not in r.name)
    assert "differ from the CPU's" in next(r.detail for r in results if r.name == "BatchedNMS, rpn")


def _answers(graph: Path, folder: Path) -> Answers:
    images = sorted((folder / "images").iterdir())
    return run_predictor(Predictor(graph, score_threshold=0.0, device="cpu"), images, read_image_ids(folder / "instances.json"))


def test_an_engine_that_answers_as_onnx_runtime_passes_and_one_that_loses_detections_fails(
    shapes_demo_graph: Callable[..., Path], tmp_path: Path
) -> None:
    """The comparison the doctor holds each engine to, on two deploy graphs that must agree (the plugin modes on ONNX
    Runtime) and on one answer with its confident detections taken away."""
    write_dataset(tmp_path / "val", count=12, seed=1)
    instances = tmp_path / "val" / "instances.json"
    native = _answers(shapes_demo_graph(1, "native"), tmp_path / "val")
    plugins = _answers(shapes_demo_graph(1, "maskrt"), tmp_path / "val")
    check = compare_answers("FP32 engine", "fp32", native, plugins, instances)
    assert check.passed, check.detail
    total = sum(len(d) for d in native.detections)
    assert check.detail.startswith(f"{total} of {total} detections matched on 12 images; box AP +0.00, mask AP +0.00")

    def without_best(found: Detections) -> Detections:
        keep = np.arange(len(found)) > 0
        return Detections(found.boxes[keep], found.scores[keep], found.labels[keep], found.class_names[1:], found.masks[keep], found.image_size)

    poorer = Answers([without_best(d) for d in plugins.detections], plugins.image_ids)
    check = compare_answers("FP32 engine", "fp32", native, poorer, instances)
    assert not check.passed
    assert "points below ONNX Runtime's" in check.detail and "12 detections scoring >= 0.5 missed and 0 added" in check.detail


@pytest.mark.gpu
@pytest.mark.skipif(GPU is None, reason="needs an NVIDIA GPU with CUDA")
def test_on_a_gpu_the_kernels_answer_as_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert maskrt(["doctor", "--json", "--no-engines"]) == 0
    report = json.loads(capsys.readouterr().out)
    tested = [check for check in report["checks"] if check["passed"] is not None]
    assert len(tested) == 1 + 5 + 7 + 2 and all(check["passed"] for check in tested), tested
