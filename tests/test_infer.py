"""`maskrt infer` and `maskrt bench` through the CLI: a folder of images and a 200x150 video on shapes-demo give the
overlays, the video and a results.json that pycocotools loads, whose detections equal stock torchvision's on the
same frames; COCO AP of the shapes val set equals torchvision's; bad inputs get one line each."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from maskrt.calib.shapes import write_dataset
from maskrt.check.coco_eval import evaluate
from maskrt.check.torch_detections import detect_dataset
from maskrt.cli.main import main as maskrt
from maskrt.contracts.errors import BadInput
from maskrt.convert.models import load_model
from maskrt.runtime.predictor import Detections, Predictor

from runtime_support import (
    assert_same_detections,
    read_video,
    shapes_demo_engine,
    shapes_frame,
    stock_torchvision,
    write_video,
)

VIDEO_FRAMES = 100
FPS = 12.0


def detections_of(results: list[dict], image_id: int, size: tuple[int, int]) -> Detections:
    """One image's entries of results.json as Detections, masks decoded."""
    from pycocotools import mask as coco_mask

    mine = [r for r in results if r["image_id"] == image_id]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in mine)], np.float32).reshape(-1, 4)
    masks = np.array([coco_mask.decode(r["segmentation"]).astype(bool) for r in mine]).reshape(-1, *size)
    labels = np.array([r["category_id"] for r in mine], np.int64)
    return Detections(boxes, np.array([r["score"] for r in mine], np.float32), labels, [""] * len(mine), masks, size)


def above(stock: dict[str, np.ndarray], threshold: float) -> dict[str, np.ndarray]:
    keep = stock["scores"] >= threshold
    return {key: value[keep] for key, value in stock.items()}


def assert_one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str], *expected: str) -> None:
    assert maskrt(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    for words in expected:
        assert words in error, error


def test_a_folder_of_images_with_a_corrupt_one(
    shapes_demo_graph: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    frames = [shapes_frame(i, size=(150, 200)) for i in range(6)]
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:02d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (folder / "03b.png").write_bytes(b"\x89PNG\r\n\x1a\n but cut short")
    out = tmp_path / "out"
    assert maskrt(["infer", str(shapes_demo_graph(1, "maskrt")), str(folder), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{folder / '03b.png'}: not a readable image, skipped" in err
    assert f"skipped 1 unreadable image(s): {folder / '03b.png'}" in err
    assert sorted(p.name for p in out.iterdir()) == [f"{i:02d}.png" for i in range(6)] + ["results.json", "timing.json"]
    assert cv2.imread(str(out / "00.png")).shape == (150, 200, 3)
    results = json.loads((out / "results.json").read_text())
    stock = stock_torchvision(load_model("shapes-demo", None, None), frames)
    # Image ids are the 0-based input order, which the skipped image keeps: 00..03 are 0..3, 03b is 4, 04 is 5.
    for image_id, theirs in zip([0, 1, 2, 3, 5, 6], stock):
        assert_same_detections(detections_of(results, image_id, (150, 200)), above(theirs, 0.5), f"image {image_id}")
    timing = json.loads((out / "timing.json").read_text())
    assert timing["frames"] == 6 and {"read_ms", "preprocess_ms", "compute_ms", "postprocess_ms"} <= set(timing["per_stage_ms"])


def test_a_video_of_200x150_frames(shapes_demo_graph: Callable[..., Path], tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    write_video(video, [shapes_frame(i, seed=11) for i in range(VIDEO_FRAMES)], FPS)
    out = tmp_path / "out"
    assert maskrt(["infer", str(shapes_demo_graph(2, "native")), str(video), "-o", str(out), "--score-threshold", "0.3"]) == 0
    written = cv2.VideoCapture(str(out / "clip.mp4"))
    assert written.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    assert int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == VIDEO_FRAMES
    assert (int(written.get(cv2.CAP_PROP_FRAME_WIDTH)), int(written.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (200, 150)
    written.release()
    results = json.loads((out / "results.json").read_text())
    assert {r["image_id"] for r in results} <= set(range(VIDEO_FRAMES)) and len(results) >= VIDEO_FRAMES
    decoded = read_video(video)  # mp4 is lossy: torchvision gets the frames that infer decoded
    stock = stock_torchvision(load_model("shapes-demo", None, None), decoded)
    for index, theirs in enumerate(stock):
        assert_same_detections(detections_of(results, index, (150, 200)), above(theirs, 0.3), f"frame {index}")
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "height": 150, "width": 200} for i in range(VIDEO_FRAMES)], "categories": [{"id": c} for c in (1, 2, 3)], "annotations": []}
    coco.createIndex()
    assert len(coco.loadRes(str(out / "results.json")).getAnnIds()) == len(results)


def test_coco_ap_of_the_shapes_val_set_equals_torchvision_s(shapes_demo_graph: Callable[..., Path], tmp_path: Path) -> None:
    val = tmp_path / "val"
    write_dataset(val, count=40, seed=1, size=128)
    out = tmp_path / "out"
    argv = ["infer", str(shapes_demo_graph(1, "native")), str(val / "images"), "--annotations", str(val / "instances.json")]
    assert maskrt([*argv, "--score-threshold", "0", "-o", str(out)]) == 0
    ours = evaluate(val / "instances.json", json.loads((out / "results.json").read_text()))
    theirs = evaluate(val / "instances.json", detect_dataset(load_model("shapes-demo", None, None), val))
    assert ours.box == pytest.approx(theirs.box, abs=0.002) and ours.mask == pytest.approx(theirs.mask, abs=0.002)
    assert ours.mask > 0.5


def test_bench_reports_every_stage_as_json(shapes_demo_graph: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert maskrt(["bench", str(shapes_demo_graph(2, "maskrt")), "--iterations", "3", "--warmup", "1", "--batch", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["stages_ms"]) == {"preprocess", "compute", "postprocess"} and report["batch"] == 1
    assert report["images_per_second"] > 0 and report["total_ms"]["p50"] >= report["stages_ms"]["compute"]["p50"]


def test_bad_inputs(shapes_demo_graph: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deploy = str(shapes_demo_graph(1, "native"))
    capsys.readouterr()  # what converting the model printed, when this test made it
    out = tmp_path / "out"
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    assert_one_error_line(capsys, ["infer", deploy, str(garbage), "-o", str(out)], str(garbage), "cannot be read as a video")
    assert_one_error_line(capsys, ["infer", deploy, "9", "-o", str(out)], "camera 9: no camera at this index")
    assert_one_error_line(capsys, ["infer", deploy, str(tmp_path / "missing.png"), "-o", str(out)], "no such file or folder")
    assert_one_error_line(capsys, ["infer", deploy, str(tmp_path / "*.jpg"), "-o", str(out)], "matches no image or video")
    (tmp_path / "empty").mkdir()
    assert_one_error_line(capsys, ["infer", deploy, str(tmp_path / "empty"), "-o", str(out)], "no images in this folder")
    assert_one_error_line(capsys, ["bench", deploy, "--cuda-graph"], "--cuda-graph", "not an engine")
    assert not out.exists()


def test_opencv_and_ffmpeg_print_nothing_of_their_own(
    shapes_demo_graph: Callable[..., Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """What OpenCV's log, FFmpeg and libpng printed around maskrt's line (12 lines for a camera that is not there):
    captured at the file descriptors, nothing but maskrt's line remains, with a decoder's reason folded in."""
    deploy = str(shapes_demo_graph(1, "native"))
    out = tmp_path / "out"
    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    write_video(whole, [shapes_frame(i) for i in range(6)], FPS)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # mp4v writes its index last
    capfd.readouterr()
    for argv, words in (
        (["infer", deploy, "9", "-o", str(out)], "camera 9: no camera at this index"),
        (["infer", deploy, str(cut), "-o", str(out)], "no 'moov' index, which an MP4 writer adds last: the file was cut short"),
    ):
        assert maskrt(argv) == 2
        captured = capfd.readouterr()
        [line] = captured.err.strip().splitlines()
        assert not captured.out and words in line, captured.err
    png = tmp_path / "damaged.png"
    data = bytearray(cv2.imencode(".png", shapes_frame(0))[1].tobytes())
    data[60] ^= 0xFF  # inside the first IDAT chunk: its CRC no longer matches
    png.write_bytes(bytes(data))
    predictor = Predictor(deploy)
    for image, words in ((tmp_path / "missing.png", "missing.png: file not found"), (png, "damaged.png: not a readable image (libpng error: ")):
        with pytest.raises(BadInput, match=re.escape(words)):
            predictor(image)
        assert capfd.readouterr() == ("", "")


def test_a_video_that_ends_early(shapes_demo_graph: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An AVI cut in half still announces all its frames in its header; infer says so and keeps what it read."""
    whole, cut = tmp_path / "whole.avi", tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (200, 150))
    for i in range(20):
        writer.write(cv2.cvtColor(shapes_frame(i), cv2.COLOR_RGB2BGR))
    writer.release()
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = tmp_path / "out"
    assert maskrt(["infer", str(shapes_demo_graph(1, "native")), str(cut), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{cut}: the video ended after" in err and "of the 20 frames it announces" in err
    read = json.loads((out / "timing.json").read_text())["frames"]
    assert 0 < read < 20 and (out / "cut.mp4").is_file()


def test_bad_engines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An engine is checked against model.engine.json before TensorRT is asked anything (this machine has none)."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), shapes_frame(0))
    out = tmp_path / "out"
    model = shapes_demo_engine(tmp_path / "model.engine", b"\x07" * 600, engine_bytes=1000)
    assert_one_error_line(capsys, ["infer", str(model), str(images), "-o", str(out)], f"{model}: truncated (600 bytes", "rebuild")
    model.write_bytes(b"")
    assert_one_error_line(capsys, ["infer", str(model), str(images), "-o", str(out)], f"{model}: is empty, not a TensorRT engine")
    (tmp_path / "model.engine.json").write_text("{ not json")
    assert_one_error_line(capsys, ["bench", str(model)], "model.engine.json: not valid JSON")
    assert_one_error_line(capsys, ["bench", str(model), "--device", "cpu"], "runs on the GPU (not --device cpu)")
    if importlib.util.find_spec("tensorrt") and hasattr(importlib.import_module("tensorrt"), "Runtime"):
        return  # the engine would then go on to TensorRT
    # Without its record the engine runs unchecked, after a warning: as far as this machine allows (exit code 3).
    (tmp_path / "model.engine.json").unlink()
    model.write_bytes(b"\x07" * 600)
    assert maskrt(["infer", str(model), str(images), "-o", str(out)]) == 3
    warning, error = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith(f"{tmp_path / 'model.engine.json'}: not found; running model.engine without checking")
    assert "running a TensorRT engine needs TensorRT, which is not installed here: " in error
    assert "pip install 'maskrt[tensorrt]'" in error
    assert not out.exists()
