"""`maskrt check`: PyTorch against the export and the deploy graphs of both plugin modes on shapes-demo's val images,
its numbers re-scored by pycocotools, broken graphs caught at the tensor where they break, bad inputs in one line."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import helper, numpy_helper
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrt.calib.images import list_images
from maskrt.calib.shapes import write_dataset
from maskrt.check.accuracy import Backends, open_backends, run_check
from maskrt.check.coco_eval import evaluate
from maskrt.check.report import report_folder
from maskrt.check.runners import BackendRunner
from maskrt.check.torch_detections import detect_dataset
from maskrt.cli.main import main as maskrt
from maskrt.convert.models import SHAPES_DEMO, load_model
from maskrt.runtime.backends import OnnxRuntimeBackend, open_backend

from detection_support import Case, assert_refused, convert
from runtime_support import shapes_demo_engine

VAL_IMAGES = 6


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """shapes-demo's export, its deploy graphs in both modes, and val images (seed 1) whose annotations name one image
    that is not there and miss one that is."""
    folder = tmp_path_factory.mktemp("check")
    val = folder / "val"
    write_dataset(val, count=VAL_IMAGES, seed=1)
    (val / "images" / "000003.png").unlink()
    shutil.copy(val / "images" / "000000.png", val / "images" / "extra.png")
    exported = folder / "model.onnx"
    assert maskrt(["export", "--model", SHAPES_DEMO, "-o", str(exported)]) == 0
    return {"val": val, "model.onnx": exported, **{f"deploy.{mode}": convert(exported, mode) for mode in ("maskrt", "native")}}


@pytest.fixture(scope="module")
def report(shapes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("report") / "report"
    argv = ["check", "--shapes-demo", "--onnx", str(shapes["model.onnx"]), "--images", str(shapes["val"]), "-o", str(output)]
    for mode in ("maskrt", "native"):
        argv += ["--deploy", str(shapes[f"deploy.{mode}"])]
    assert maskrt(argv) == 0
    return output


def test_the_report_compares_pytorch_the_export_and_both_deploy_modes(report: Path) -> None:
    data = json.loads((report / "report.json").read_text())
    names = [b["name"] for b in data["backends"]]
    assert names == ["pytorch", "pytorch.canvas", "pytorch.transform", "model.onnx", "deploy.maskrt.onnx", "deploy.native.onnx"]
    assert data["gate"]["passed"] and data["images"]["compared"] == VAL_IMAGES
    assert data["images"]["not_annotated"] == ["extra.png"] and data["images"]["scored"] == VAL_IMAGES - 1
    for name, backend in data["tensors"]["backends"].items():
        assert backend["first_jump"] is None, name
        assert len(backend["tensors"]) == 18 and max(t["error"] for t in backend["tensors"]) < 1e-3, name
    for name, found in data["detections"]["backends"].items():
        assert found["missed"] == found["extra"] == 0 and found["min_mask_iou"] > 0.99, name
    for name, task in data["task"]["backends"].items():
        assert abs(task["delta"].get("pytorch", {"box": 0})["box"]) <= 0.05, name
    for page in ("index.html", "report.md"):
        text = (report / page).read_text()
        assert all(name in text for name in names) and "PASSED" in text


def test_the_results_files_rescore_to_the_reported_ap(report: Path, shapes: dict[str, Path]) -> None:
    data = json.loads((report / "report.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(shapes["val"] / "instances.json"))
        for backend in data["backends"]:
            results = truth.loadRes(str(report / backend["results_file"]))
            for iou_type, kind in (("bbox", "box"), ("segm", "mask")):
                evaluation = COCOeval(truth, results, iou_type)
                evaluation.params.imgIds = data["images"]["scored_image_ids"]
                evaluation.evaluate()
                evaluation.accumulate()
                evaluation.summarize()
                reported = data["task"]["backends"][backend["name"]][kind]
                assert reported["AP"] == pytest.approx(100 * evaluation.stats[0], abs=1e-3)
                assert reported["AP75"] == pytest.approx(100 * evaluation.stats[2], abs=1e-3)


def test_pytorch_as_a_user_runs_it_scores_as_torchvision_on_the_dataset(report: Path, shapes: dict[str, Path], tmp_path: Path) -> None:
    dataset = tmp_path / "annotated"
    shutil.copytree(shapes["val"], dataset)
    (dataset / "images" / "extra.png").unlink()
    instances = json.loads((dataset / "instances.json").read_text())
    instances["images"] = [i for i in instances["images"] if (dataset / "images" / i["file_name"]).is_file()]
    (dataset / "instances.json").write_text(json.dumps(instances))
    ap = evaluate(dataset / "instances.json", detect_dataset(load_model(SHAPES_DEMO, None, None), dataset))
    reported = json.loads((report / "report.json").read_text())["task"]["backends"]["pytorch.transform"]
    assert reported["box"]["AP"] == pytest.approx(100 * ap.box, abs=1e-3)
    assert reported["mask"]["AP"] == pytest.approx(100 * ap.mask, abs=1e-3)


def _sampling_ratio_changed(deploy: Path, output: Path) -> Path:
    """The native graph with the box head's RoiAlign sampling once: the one over all FPN levels side by side, or of
    one level per RoiAlign the finest (where shapes' RoIs go)."""
    model = onnx.load(deploy)

    def attributes(node: onnx.NodeProto) -> dict[str, object]:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    box_aligns = [n for n in model.graph.node if n.op_type == "RoiAlign" and attributes(n)["output_height"] == 7]
    [align] = [n for n in box_aligns if len(box_aligns) == 1 or attributes(n)["spatial_scale"] == 0.25]
    next(a for a in align.attribute if a.name == "sampling_ratio").i = 1
    onnx.save(model, output)
    return output


def _mask_head_scaled(deploy: Path, output: Path) -> Path:
    model = onnx.load(deploy)
    for tensor in model.graph.initializer:
        if tensor.name.startswith("roi_heads.mask_head."):
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(1.01), tensor.name))
    onnx.save(model, output)
    return output


def _failing_on_marked_images(deploy: Path, output: Path) -> Path:
    """A graph that ONNX Runtime cannot run on an image whose top-left pixel is pure black: an index out of range."""
    model = onnx.load(deploy)
    nodes = [
        helper.make_node("Slice", ["images", "probe_starts", "probe_ends"], ["probe_pixel"]),
        helper.make_node("ReduceMax", ["probe_pixel"], ["probe_value"], keepdims=0),
        helper.make_node("Equal", ["probe_value", "probe_zero"], ["probe_black"]),
        helper.make_node("Cast", ["probe_black"], ["probe_index"], to=onnx.TensorProto.INT64),
        helper.make_node("Mul", ["probe_index", "probe_far"], ["probe_far_index"]),
        helper.make_node("Gather", ["probe_data", "probe_far_index"], ["probe"]),
    ]
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.zeros(4, np.int64), "probe_starts"),
            numpy_helper.from_array(np.ones(4, np.int64), "probe_ends"),
            numpy_helper.from_array(np.array(0, np.float32), "probe_zero"),
            numpy_helper.from_array(np.array(7, np.int64), "probe_far"),
            numpy_helper.from_array(np.zeros(1, np.float32), "probe_data"),
        ]
    )
    model.graph.node.extend(nodes)
    model.graph.output.append(helper.make_tensor_value_info("probe", onnx.TensorProto.FLOAT, []))
    onnx.save(model, output)
    return output


@pytest.fixture(scope="module")
def broken(shapes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, str]:
    """`maskrt check` without annotations on three broken graphs; the exit code, the report and what it printed."""
    folder = tmp_path_factory.mktemp("broken")
    images = folder / "images"
    shutil.copytree(shapes["val"] / "images", images)
    marked = cv2.imread(str(images / "000001.png"))
    marked[0, 0] = 0
    cv2.imwrite(str(images / "000001.png"), marked)
    graphs = [
        _sampling_ratio_changed(shapes["deploy.native"], folder / "sampling.onnx"),
        _mask_head_scaled(shapes["deploy.maskrt"], folder / "mask_head.onnx"),
        _failing_on_marked_images(shapes["deploy.native"], folder / "fails.onnx"),
    ]
    output = folder / "report"
    argv = ["check", "--shapes-demo", "--images", str(images), "-o", str(output), "--tensor-images", "4"]
    for graph in graphs:
        argv += ["--deploy", str(graph)]
    console = io.StringIO()
    with contextlib.redirect_stderr(console):
        code = maskrt(argv)
    return code, output, console.getvalue()


def test_a_broken_graph_is_caught_at_the_tensor_where_it_breaks(broken: tuple[int, Path, str]) -> None:
    code, output, printed = broken
    assert code == 1
    data = json.loads((output / "report.json").read_text())
    assert "task" not in data and not data["gate"]["passed"]
    jumps = {name: backend["first_jump"] for name, backend in data["tensors"]["backends"].items()}
    assert jumps["sampling.onnx"] == "roi_heads.box_predictor.cls_score"
    assert jumps["mask_head.onnx"] == "roi_heads.mask_predictor.mask_fcn_logits"
    failures = data["gate"]["failures"]
    assert any(f.startswith("sampling.onnx: answers differently from PyTorch from roi_heads.box_predictor.cls_score") for f in failures)
    assert any(f.startswith("mask_head.onnx: answers differently from PyTorch from roi_heads.mask_predictor.mask_fcn_logits") for f in failures)
    assert "from roi_heads.box_predictor.cls_score on" in printed


def test_a_backend_that_fails_on_one_image_is_reported_for_that_image(broken: tuple[int, Path, str]) -> None:
    _, output, _ = broken
    data = json.loads((output / "report.json").read_text())
    [fails] = [b for b in data["backends"] if b["name"] == "fails.onnx"]
    assert [f["image"] for f in fails["failures"]] == ["000001.png"]
    assert len(data["detections"]["backends"]["fails.onnx"]["images"]) == VAL_IMAGES - 1
    assert any(f.startswith("fails.onnx: failed on 1 image(s), first 000001.png") for f in data["gate"]["failures"])
    assert "000001.png" in (output / "index.html").read_text()


def test_the_html_report_opens_in_chromium_with_no_console_messages(report: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("screenshot_report", Path(__file__).parents[1] / "scripts" / "screenshot_report.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    if script.chromium() is None:
        pytest.skip("no chromium on this machine (apt-get install -y chromium); .ci/run installs it")
    page = (report / "index.html").read_text()
    assert "http://" not in page and "https://" not in page and page.count("data:image/png;base64,") >= 4
    shot = tmp_path / "report.png"
    assert script.screenshot(report / "index.html", shot) == []
    image = cv2.imread(str(shot))
    assert image.shape[0] > 2000 and image.std() > 20  # a long page with plots, not a blank one


def test_images_that_leave_the_canvas_part_empty_compare_as_each_graph_sees_them(shapes: dict[str, Path], tmp_path: Path) -> None:
    """80 of the canvas' 128 rows: torchvision pads that image to 96 rows, the graphs run on 128. Each graph is held to
    PyTorch as it sees the image (alone at its size with `image_sizes`, the whole canvas without) and agrees."""
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((shapes["val"] / "images").glob("*.png"))[:2]:
        cv2.imwrite(str(images / path.name), cv2.imread(str(path))[:80])
    output = tmp_path / "report"
    argv = ["check", "--shapes-demo", "--onnx", str(shapes["model.onnx"]), "--images", str(images), "-o", str(output)]
    for mode in ("maskrt", "native"):
        argv += ["--deploy", str(shapes[f"deploy.{mode}"])]
    assert maskrt(argv) == 0
    data = json.loads((output / "report.json").read_text())
    for name, backend in data["tensors"]["backends"].items():
        assert backend["first_jump"] is None and max(t["error"] for t in backend["tensors"]) < 1e-3, name
    graphs = {name: found for name, found in data["detections"]["backends"].items() if not name.startswith("pytorch")}
    assert len(graphs) == 3
    for name, found in graphs.items():
        assert found["matched"] > 0 and found["missed"] == found["extra"] == 0 and found["min_mask_iou"] > 0.99, name


def test_graphs_of_batch_two_from_a_plain_export(resnet18_plain: Case, converted: object, tmp_path: Path) -> None:
    """A ResNet-18 FPN (3 classes, 320x480) from plain torch.onnx.export at batch 2: no metadata, two image inputs."""
    images = tmp_path / "images"
    images.mkdir()
    for i, image in enumerate(resnet18_plain.images):
        cv2.imwrite(str(images / f"{i}.png"), cv2.cvtColor(image.transpose(1, 2, 0).astype(np.uint8), cv2.COLOR_RGB2BGR))
    deploy = converted(resnet18_plain, "native")  # type: ignore[operator]
    backends = open_backends(resnet18_plain.exported, [deploy], [])
    result = run_check(resnet18_plain.model, backends, list_images(images).entries, None, tmp_path)
    for backend in result.compared:
        assert backend.jump is None and max(e.relative for e in backend.tensors) < 1e-3, backend.name
        assert sum(a.matched for a in backend.agreements.values()) > 0, backend.name
        assert all(a.missed == a.extra == 0 for a in backend.agreements.values()), backend.name


def test_deploy_graphs_are_checked_on_the_backend_the_predictor_runs(
    report: Path, shapes: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each deploy graph's answers, tensors and timings come from the runtime's own backend (the class that
    Predictor, `maskrt infer` and `maskrt bench` open), called through its run; the report says what ran each."""
    deploy = shapes["deploy.maskrt"]
    [opened] = open_backends(None, [deploy], []).opened
    assert isinstance(opened.runner, BackendRunner)
    backend = opened.runner.backend
    assert type(backend) is type(open_backend(deploy)) is OnnxRuntimeBackend
    calls: list[list[str]] = []
    run = backend.run

    def counted(feeds: dict[str, np.ndarray], *args: object) -> dict[str, np.ndarray]:
        calls.append(sorted(feeds))
        return run(feeds, *args)

    monkeypatch.setattr(backend, "run", counted)
    entries = list_images(shapes["val"] / "images").entries[:2]
    result = run_check(load_model(SHAPES_DEMO, None, None), Backends([opened], []), entries, None, tmp_path)
    assert calls == [["image_sizes", "images"]] * len(entries)
    [checked] = result.compared
    assert checked.runtime == backend.runtime == f"ONNX Runtime {onnxruntime.__version__} CPU, staged plugins"
    assert not checked.failures and len(checked.tensors) == 18 and max(e.relative for e in checked.tensors) < 1e-3
    rows = {b["name"]: b["runtime"] for b in json.loads((report / "report.json").read_text())["backends"]}
    assert rows["deploy.maskrt.onnx"] == checked.runtime
    assert rows["deploy.native.onnx"] == rows["model.onnx"] == f"ONNX Runtime {onnxruntime.__version__} CPU"
    assert rows["pytorch"].startswith("PyTorch ") and checked.runtime in (report / "index.html").read_text()


def test_a_threshold_that_is_not_a_number(shapes: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "report"
    argv = ["check", "--shapes-demo", "--onnx", str(shapes["model.onnx"]), "--images", str(shapes["val"]), "-o", str(output)]
    assert_refused(capsys, [*argv, "--max-ap-drop", "half"], output, "--max-ap-drop", "half")


def test_missing_images_and_nothing_to_compare(shapes: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "report"
    argv = ["check", "--shapes-demo", "-o", str(output), "--images"]
    assert_refused(capsys, [*argv, str(tmp_path / "nowhere"), "--onnx", str(shapes["model.onnx"])], output, "nowhere")
    assert_refused(capsys, [*argv, str(shapes["val"])], output, "nothing to compare")
    assert_refused(capsys, [*argv, str(shapes["val"]), "--deploy", str(tmp_path / "missing.onnx")], output, "missing.onnx", "not found")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 not a protobuf \xff" * 64)
    assert_refused(capsys, [*argv, str(shapes["val"]), "--deploy", str(garbage)], output, "garbage.onnx", "not a readable ONNX model")


def test_an_engine_without_tensorrt_is_reported_not_run_and_the_rest_is_checked(
    shapes: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("tensorrt") and hasattr(importlib.import_module("tensorrt"), "Runtime"):
        pytest.skip("TensorRT is installed here: the engine would run")
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(shapes["val"] / "images" / "000000.png", images)
    engine = shapes_demo_engine(tmp_path / "model.engine", b"an engine built elsewhere")
    output = tmp_path / "report"
    argv = ["check", "--shapes-demo", "--onnx", str(shapes["model.onnx"]), "--engine", str(engine), "--images", str(images)]
    assert maskrt([*argv, "-o", str(output)]) == 3
    assert "needs TensorRT" in capsys.readouterr().err
    data = json.loads((output / "report.json").read_text())
    assert data["gate"]["not_run"] == ["model.engine"] and data["gate"]["passed"]
    assert data["detections"]["backends"]["model.onnx"]["missed"] == 0


def test_a_new_report_replaces_an_earlier_one_whole_and_nothing_else(tmp_path: Path) -> None:
    output = tmp_path / "report"
    output.mkdir()
    (output / "report.json").write_text("{}")
    (output / "old.results.json").write_text("[]")
    with report_folder(output) as staging:
        (staging / "report.json").write_text('{"new": true}')
        assert not (output / "report.json").read_text().startswith('{"new"')  # the old one stays until the end
    assert [p.name for p in output.iterdir()] == ["report.json"] and "new" in (output / "report.json").read_text()
    with pytest.raises(RuntimeError), report_folder(output) as staging:
        (staging / "report.json").write_text("half")
        raise RuntimeError("the check broke off")
    assert "new" in (output / "report.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no staging folder left behind
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="holds other files than a report"), report_folder(other):
        pass
