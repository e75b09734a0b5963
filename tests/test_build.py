"""`trt-convert` on a machine without TensorRT: everything up to the precision ONNX, then exit code 3 with what to
install and the trtexec line; its bad inputs (one line on stderr, exit code 2, nothing written); what each TensorRT
version builds; the legacy calibration cache's key."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from rich.console import Console
from torchvision.ops import box_iou

from maskrt.calib.shapes import render_sample
from maskrt.convert.build import (
    BuildOptions,
    Recipe,
    calibration_cache_key,
    check_recipe,
    missing_builder,
    recipe,
    reusable_calibration_cache,
    write_pair,
)
from maskrt.cli.main import main as maskrt
from maskrt.contracts.records import PRECISION_KEY, read_metadata, write_metadata
from maskrt.contracts.tensorrt import TensorRT, installed_tensorrt
from maskrt.plugins import cpu_session
from maskrt.runtime.preprocess import letterbox

from tensorrt_support import LEAN, RTX, WITHOUT_TORCH, run_maskrt, run_python

needs_no_builder = pytest.mark.skipif(
    missing_builder(installed_tensorrt()) is None, reason="TensorRT and a GPU are here: the engine is built"
)


def copy_into(folder: Path, source: Path, name: str | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    return Path(shutil.copyfile(source, folder / (name or source.name)))


def assert_refused(capsys: pytest.CaptureFixture[str], argv: list[str], folder: Path, *expected: str) -> None:
    """Exit code 2, one line on stderr that says `expected`, and nothing new in `folder`."""
    before = sorted(folder.iterdir())
    assert maskrt(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    for words in expected:
        assert words in error, error
    assert sorted(folder.iterdir()) == before


@needs_no_builder
def test_without_tensorrt_the_deploy_graph_is_kept_and_exit_code_3_says_what_to_install_and_the_trtexec_line(
    shapes_demo_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = copy_into(tmp_path, shapes_demo_export)
    engine = tmp_path / "model.engine"
    capsys.readouterr()
    argv = ["convert", str(model), "--plugins", "native", "--precision", "fp32", "--timing-cache", "t.cache"]
    assert maskrt([*argv, "--dla-core", "1", "--opt-level", "4", "--workspace", "2"]) == 3
    last = capsys.readouterr().err.strip().splitlines()[-1]
    deploy = tmp_path / "model.deploy.onnx"
    assert f"{deploy} is ready, but building its engine needs TensorRT, which is not installed here" in last
    assert "pip install 'maskrt[tensorrt]'" in last
    assert (
        f"trtexec --onnx={deploy} --saveEngine={engine} --noTF32 --memPoolSize=workspace:2048 --timingCacheFile=t.cache "
        "--useDLACore=1 --allowGPUFallback --builderOptimizationLevel=4" in last
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.deploy.onnx", "model.onnx"]
    assert onnx.load(deploy).graph.output[0].name == "num_detections"


@needs_no_builder
def test_a_deploy_graph_given_as_the_model_skips_surgery(
    shapes_demo_deploy: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deploy = copy_into(tmp_path, shapes_demo_deploy("maskrt"))
    capsys.readouterr()
    assert maskrt(["convert", str(deploy), "--precision", "fp32"]) == 3
    err = capsys.readouterr().err
    assert "surgery on" not in err and "deploy graph:" not in err  # surgery's first line and its settings table
    last = err.strip().splitlines()[-1]
    assert f"{deploy} is ready" in last
    assert "trtexec cannot build it: maskrt's plugins are Python" in last and "--plugins native" in last
    assert [p.name for p in tmp_path.iterdir()] == [deploy.name]


def test_onnx_only_writes_the_named_graph_and_nothing_else(shapes_demo_export: Path, tmp_path: Path) -> None:
    model = copy_into(tmp_path / "in", shapes_demo_export)
    output = tmp_path / "out" / "shapes.onnx"
    output.parent.mkdir()
    assert maskrt(["convert", str(model), "--onnx-only", "--precision", "fp32", "--plugins", "native", "-o", str(output)]) == 0
    assert [p.name for p in output.parent.iterdir()] == ["shapes.onnx"] and len(list(model.parent.iterdir())) == 1
    assert [o.name for o in onnx.load(output).graph.output] == ["num_detections", "boxes", "scores", "classes", "masks"]


def run_on_val_images(path: Path) -> list[dict[str, np.ndarray]]:
    """The graph's outputs on ONNX Runtime for four shapes val images (seed 1), one image at a time."""
    session = cpu_session(path)
    names = [output.name for output in session.get_outputs()]
    inputs = [value.name for value in session.get_inputs()]
    boxes = [letterbox(render_sample(1, index, 128)[0], (128, 128), (0.485, 0.456, 0.406)) for index in range(4)]
    feeds = [{"images": image[None], "image_sizes": np.array([box.resized], np.int32)} for image, box in boxes]
    return [dict(zip(names, session.run(None, {name: feed[name] for name in inputs}))) for feed in feeds]


@pytest.mark.parametrize(("precision", "float_type", "min_iou"), [("fp16", "fp16", 0.99), ("int8", "fp32", 0.85)])
def test_onnx_only_fp16_and_int8_graphs_run_on_onnx_runtime_and_find_what_fp32_finds(
    shapes_demo_precision: dict[str, Path],
    shapes_demo_deploy: Callable[[str], Path],
    precision: str,
    float_type: str,
    min_iou: float,
) -> None:
    graph = shapes_demo_precision[precision]
    deploy = shapes_demo_deploy("maskrt")
    record = read_metadata(onnx.load(graph), PRECISION_KEY)
    assert (record["precision"], record["float"]) == (precision, float_type)
    assert record["deploy_sha256"] == hashlib.sha256(deploy.read_bytes()).hexdigest()
    for reference, candidate in zip(run_on_val_images(deploy), run_on_val_images(graph)):
        found, made = int(reference["num_detections"].item()), int(candidate["num_detections"].item())
        confident = reference["scores"][0, :found] > 0.5
        assert confident.sum() >= 3, "shapes-demo should find shapes in every val image"
        iou = box_iou(torch.from_numpy(reference["boxes"][0, :found][confident]), torch.from_numpy(candidate["boxes"][0, :made]))
        same_class = reference["classes"][0, :found][confident][:, None] == candidate["classes"][0, :made][None]
        best = (iou * torch.from_numpy(same_class)).max(dim=1).values
        assert (best >= min_iou).all(), best


@needs_no_builder
@pytest.mark.parametrize("given", ["deploy", "fp16"])
def test_a_deploy_or_precision_graph_converts_without_torch_torchvision_or_onnx_graphsurgeon(
    given: str, shapes_demo_deploy: Callable[[str], Path], shapes_demo_precision: dict[str, Path], tmp_path: Path
) -> None:
    """What a Jetson with TensorRT but not the export's dependencies runs: as far as the missing builder here."""
    graph = copy_into(tmp_path / "in", shapes_demo_deploy("native") if given == "deploy" else shapes_demo_precision["fp16"])
    precision = ["--precision", "fp32"] if given == "deploy" else []
    result = run_maskrt(WITHOUT_TORCH, ["convert", str(graph), *precision], tmp_path / "cache")
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert f"{graph} is ready, but building its engine needs TensorRT" in last
    if given == "deploy":
        assert f"trtexec --onnx={graph} --saveEngine={graph.with_suffix('.engine')}" in last
    else:  # shapes-demo's FP16 graph has maskrt's plugins
        assert "trtexec cannot build it: maskrt's plugins are Python" in last
    assert [p.name for p in graph.parent.iterdir()] == [graph.name]


def test_without_modelopt_the_fp16_graph_is_refused_before_anything_is_written(
    shapes_demo_deploy: Callable[[str], Path], tmp_path: Path
) -> None:
    """ModelOpt's ONNX tools need onnx-graphsurgeon, which WITHOUT_TORCH blocks."""
    graph = copy_into(tmp_path / "in", shapes_demo_deploy("native"))
    result = run_maskrt(WITHOUT_TORCH, ["convert", str(graph), "--precision", "fp16", "--onnx-only"], tmp_path / "cache")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert f"{graph}: making the fp16 graph needs NVIDIA ModelOpt's ONNX tools, which cannot be imported here" in line
    assert [p.name for p in graph.parent.iterdir()] == [graph.name]


def test_bad_inputs_are_refused_before_anything_is_written(
    shapes_demo_deploy: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deploy = copy_into(tmp_path, shapes_demo_deploy("native"), "native.onnx")
    capsys.readouterr()
    convert = ["convert", str(deploy)]
    assert_refused(capsys, [*convert, "-o", str(deploy)], tmp_path, f"{deploy}: is also the input file")
    assert_refused(capsys, [*convert, "--onnx-only", "-o", str(deploy)], tmp_path, "is also the input file")
    assert_refused(
        capsys, [*convert, "--precision", "int8"], tmp_path, f"{deploy}: --precision int8 needs calibration images", "--calib-images"
    )
    assert_refused(
        capsys,
        [*convert, "--precision", "int8", "--int8-calibrator", "legacy", "--onnx-only", "--calib-images", str(tmp_path)],
        tmp_path,
        "--int8-calibrator legacy calibrates inside TensorRT's builder",
    )
    assert_refused(capsys, [*convert, "--int8-calibrator", "legacy"], tmp_path, "--int8-calibrator legacy is for --precision int8")
    assert_refused(capsys, [*convert, "--plugins", "maskrt"], tmp_path, "is a --plugins native deploy graph")
    assert_refused(capsys, [*convert, "--surgery-only"], tmp_path, "is already a deploy graph")
    assert_refused(capsys, [*convert, "-o", str(tmp_path / "missing" / "m.engine")], tmp_path, "does not exist")


def test_a_precision_graph_builds_only_at_its_own_precision(
    shapes_demo_deploy: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = onnx.load(shapes_demo_deploy("native"))
    capsys.readouterr()
    write_metadata(model, PRECISION_KEY, {"form": "qdq", "precision": "int8", "deploy_sha256": "0" * 64})
    graph = tmp_path / "model.int8.onnx"
    onnx.save(model, graph)
    assert_refused(
        capsys, ["convert", str(graph), "--precision", "fp16"], tmp_path, "is already a int8 graph", "--precision int8"
    )
    assert_refused(capsys, ["convert", str(graph), "--onnx-only"], tmp_path, "is already the int8 graph")


def read_only_command(folder: Path) -> list[str] | None:
    """A command prefix under which `folder` is read-only even for root (a read-only bind mount in a user and mount
    namespace), or None where that cannot be made."""
    if not shutil.which("unshare"):
        return None
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", script, str(folder), "true"], capture_output=True)
    return ["unshare", "-rm", "sh", "-c", script, str(folder)] if probe.returncode == 0 else None


def test_an_engine_path_in_a_read_only_folder(shapes_demo_deploy: Callable[[str], Path], tmp_path: Path) -> None:
    deploy = copy_into(tmp_path, shapes_demo_deploy("native"), "deploy.onnx")
    folder = tmp_path / "read-only"
    folder.mkdir()
    prefix = read_only_command(folder)
    if prefix is None:
        pytest.skip("no user namespace for a read-only mount here")
    engine = folder / "model.engine"
    command = [*prefix, sys.executable, "-m", "maskrt.cli", "convert", str(deploy), "--precision", "fp32", "-o", str(engine)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert f"{engine}: cannot be written, {folder} takes no new files (Read-only file system)" in line
    assert list(folder.iterdir()) == []


def test_tensorrt_11_refuses_the_legacy_calibrator_and_a_runtime_only_install_exits_with_3(
    shapes_demo_deploy: Callable[[str], Path], tmp_path: Path
) -> None:
    """TensorRT 11.4's lean runtime in place of TensorRT: its module says what TensorRT 11 lacks."""
    deploy = copy_into(tmp_path / "in", shapes_demo_deploy("native"), "deploy.onnx")
    engine = tmp_path / "in" / "model.engine"
    argv = ["convert", str(deploy), "--precision", "int8", "--int8-calibrator", "legacy", "--calib-images", str(tmp_path)]
    result = run_maskrt(LEAN, [*argv, "-o", str(engine)], tmp_path / "cache")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert f"{deploy}: TensorRT 11.4.0.106 has no IInt8EntropyCalibrator2" in line and "--int8-calibrator qdq" in line
    result = run_maskrt(LEAN, ["convert", str(deploy), "--precision", "fp32", "-o", str(engine)], tmp_path / "cache")
    assert result.returncode == 3, result.stderr
    assert "needs TensorRT's builder, which this TensorRT 11.4.0.106 (a runtime-only install) does not have" in result.stderr
    assert [p.name for p in deploy.parent.iterdir()] == ["deploy.onnx"]


INSTALLED = "from maskrt.contracts.tensorrt import installed_tensorrt\nimport dataclasses, json\nprint(json.dumps(dataclasses.asdict(installed_tensorrt())))"


@pytest.mark.parametrize("standin", ["lean", "rtx"])
def test_what_a_real_tensorrt_module_says_it_can_do(standin: str, tmp_path: Path) -> None:
    result = run_python({"lean": LEAN, "rtx": RTX}[standin], INSTALLED, tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    # Neither has TensorRT <= 10's weak typing or calibrator; both have IPluginV3 and the progress monitor.
    assert (found["weak_typing"], found["legacy_calibrator"], found["plugins_v3"], found["progress_monitor"]) == (
        False,
        False,
        True,
        True,
    )
    assert (found["builder"], found["strong_typing"]) == ((False, True) if standin == "lean" else (True, True))


TENSORRT_8_5 = TensorRT("8.5.2.2", True, True, False, True, False, False, False)
TENSORRT_8_6 = TensorRT("8.6.2.3", True, True, False, True, False, False, True)
TENSORRT_10_3 = TensorRT("10.3.0.30", True, True, True, True, True, True, True)
TENSORRT_11_4 = TensorRT("11.4.0.106", True, False, True, False, True, True, True)


@pytest.mark.parametrize(
    "tensorrt, precision, calibrator, given, expected",
    [
        # docs/design.md, "Precision": <= 10 the builder's flags with the box layers held FP32; 11 strongly typed graphs.
        (TENSORRT_8_5, "fp16", "qdq", "export", Recipe("deploy", False, fp16=True, hold_fp32=True)),
        (TENSORRT_10_3, "fp16", "qdq", "deploy", Recipe("deploy", False, fp16=True, hold_fp32=True)),
        (TENSORRT_11_4, "fp16", "qdq", "deploy", Recipe("autocast", True)),
        (TENSORRT_8_6, "int8", "qdq", "deploy", Recipe("qdq", False, fp16=True, int8=True, hold_fp32=True)),
        (TENSORRT_11_4, "int8", "qdq", "deploy", Recipe("qdq", True)),
        (TENSORRT_10_3, "int8", "legacy", "deploy", Recipe("deploy", False, True, True, True, calibrate=True)),
        (TENSORRT_8_5, "fp32", "qdq", "deploy", Recipe("deploy", False)),
        (TENSORRT_11_4, "fp32", "qdq", "deploy", Recipe("deploy", True)),
        # An AutoCast graph made elsewhere: built strongly typed where TensorRT can, its types as hints on 8.x.
        (TENSORRT_10_3, "fp16", "qdq", "autocast", Recipe("autocast", True)),
        (TENSORRT_8_6, "fp16", "qdq", "autocast", Recipe("autocast", False, fp16=True, hold_fp32=True)),
        # Built elsewhere (--onnx-only, no TensorRT or GPU here): the typed forms every TensorRT builds.
        (None, "fp16", "qdq", "export", Recipe("autocast", True)),
        (None, "int8", "qdq", "export", Recipe("qdq", True)),
    ],
)
def test_what_each_tensorrt_builds(
    tensorrt: TensorRT | None, precision: str, calibrator: str, given: str, expected: Recipe
) -> None:
    assert recipe(precision, calibrator, given, tensorrt) == expected


def test_a_legacy_calibration_cache_is_reused_only_for_its_graph_and_images(tmp_path: Path) -> None:
    console = Console(file=open(tmp_path / "log", "w"), width=10_000)
    cache = tmp_path / "model.calib"
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\nimages: 3c010a14\n")
    made_for = calibration_cache_key("a" * 64, ["a.png", "b.png"])
    cache.with_name("model.calib.json").write_text(json.dumps(made_for))
    assert reusable_calibration_cache(cache, made_for, console) == cache.read_bytes()
    other_graph = calibration_cache_key("b" * 64, ["a.png", "b.png"])
    assert reusable_calibration_cache(cache, other_graph, console) is None
    other_images = calibration_cache_key("a" * 64, ["a.png", "c.png"])
    assert reusable_calibration_cache(cache, other_images, console) is None
    cache.with_name("model.calib.json").unlink()
    assert reusable_calibration_cache(cache, made_for, console) is None
    console.file.close()
    warnings = (tmp_path / "log").read_text().splitlines()
    assert warnings == [
        f"{cache}: the calibration cache was made for another graph (sha256 {made_for['graph_sha256'][:12]}, this one "
        f"is {other_graph['graph_sha256'][:12]}); calibrating again",
        f"{cache}: the calibration cache was made from other calibration images; calibrating again",
        f"{cache}: the calibration cache has no readable record of what it was made from (model.calib.json); "
        "calibrating again",
    ]



def test_an_engine_and_its_json_appear_both_or_neither(tmp_path: Path) -> None:
    engine, record = tmp_path / "model.engine", tmp_path / "model.engine.json"
    write_pair(engine, b"engine", record, b"{}")
    assert (engine.read_bytes(), record.read_bytes()) == (b"engine", b"{}")
    engine.unlink()
    record.unlink()
    (record / "in-the-way").mkdir(parents=True)  # the json cannot replace a folder that holds something
    with pytest.raises(OSError):
        write_pair(engine, b"engine", record, b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine.json"] and record.is_dir()


@pytest.mark.parametrize(
    "tensorrt, plugins, calibrator, opt_level, message",
    [
        (TENSORRT_8_6, "maskrt", "qdq", None, "a --plugins maskrt graph needs TensorRT >= 10 (IPluginV3); TensorRT 8.6.2.3 "
         "is installed: convert with --plugins native"),
        (TENSORRT_11_4, "native", "legacy", None, "TensorRT 11.4.0.106 has no IInt8EntropyCalibrator2"),
        (TENSORRT_8_5, "native", "qdq", 3, "--opt-level needs TensorRT >= 8.6; TensorRT 8.5.2.2 is installed"),
    ],
)
def test_what_the_installed_tensorrt_cannot_do_is_refused_first(
    tensorrt: TensorRT, plugins: str, calibrator: str, opt_level: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(f"model.onnx: {message}")):
        check_recipe(Path("model.onnx"), "int8", calibrator, plugins, BuildOptions(opt_level=opt_level), tensorrt)
