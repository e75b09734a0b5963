"""The readers of what a user hands maskrt, fuzzed with hypothesis on damaged copies of real files: shapes-demo's deploy
graph, an engine.json as trt-convert writes it, a PNG and a JPEG, short MP4 and AVI videos, and the instances.json of
`maskrt shapes`. Whatever the damage, a reader answers or refuses with BadInput in one line: never another exception,
never a line of a library's own on the console, never a hang (hypothesis' deadline per example, and faulthandler
ends the whole run if one example hangs in native code). Bounded: a few seconds per reader on 2 CPU cores.

The readers run in the main thread, as the Predictor, calibration and check run them. `maskrt infer` decodes in a
reader thread, where what an image decoder prints cannot be captured without swallowing the console's own lines
(runtime/opencv_log.py): there a damaged image is still refused in one line, and libpng may add one of its own.
"""

from __future__ import annotations

import faulthandler
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from maskrt.calib.images import list_images, read_image_ids
from maskrt.calib.shapes import render_sample, write_dataset
from maskrt.check.coco_eval import load_ground_truth
from maskrt.contracts.errors import BadInput
from maskrt.contracts.files import read_onnx
from maskrt.contracts.records import (
    DEPLOY_KEY,
    parse_engine_record,
    read_deploy_record,
    read_engine_record,
    read_metadata,
    read_precision_record,
    write_metadata,
)
from maskrt.runtime.infer import find_sources, read_frames
from maskrt.runtime.preprocess import letterbox, read_rgb

from runtime_support import shapes_demo_engine

FUZZ = settings(
    max_examples=100,
    deadline=timedelta(seconds=10),  # a reader that takes this long on a small file is as good as hung
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HANG_S = 300  # faulthandler ends the test run, with every thread's traceback, if one test takes longer


@dataclass(frozen=True)
class Original:
    """A real file and its bytes (left out of hypothesis' report of a failing example)."""

    path: Path
    data: bytes = field(repr=False)


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@st.composite
def damaged(draw: st.DrawFn, data: bytes, hot: tuple[int, int] | None = None) -> bytes:
    """`data` with a few bytes changed, inserted or deleted, or cut short; `hot` (start, stop) is where most edits
    land (the part of a file where its structure is, rather than its bulk)."""
    result = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not result:
            break
        start, stop = hot if hot is not None and draw(st.booleans()) else (0, len(result))
        at = draw(st.integers(start, max(start, min(stop, len(result)) - 1)))
        edit = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        if edit == "flip":
            result[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "set":
            result[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
        elif edit == "insert":
            result[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "delete":
            del result[at : at + draw(st.integers(1, 64))]
        else:
            del result[at:]
    return bytes(result)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def json_changed(draw: st.DrawFn, value: Any) -> Any:
    """`value` (parsed JSON) with one place in it replaced by another JSON value, or removed from its object."""
    if isinstance(value, (dict, list)) and value and draw(st.integers(0, 3)):
        keys = list(value) if isinstance(value, dict) else list(range(len(value)))
        key = draw(st.sampled_from(keys))
        copy = dict(value) if isinstance(value, dict) else list(value)
        if isinstance(copy, dict) and draw(st.integers(0, 4)) == 0:
            del copy[key]
        else:
            copy[key] = draw(json_changed(value[key]))
        return copy
    return draw(JSON_VALUES)


def assert_answers_or_refuses(read: Callable[[], object], capfd: pytest.CaptureFixture[str]) -> object:
    """What `read()` returns, or None when it refused with BadInput in one line; nothing printed meanwhile."""
    try:
        answer = read()
        event("answered")
    except BadInput as refusal:
        message = str(refusal)
        assert message and "\n" not in message, repr(message)
        event("refused")  # --hypothesis-show-statistics: how the damage splits between the two
        answer = None
    out, err = capfd.readouterr()
    assert not out and not err, f"printed by a library: {out + err!r}"
    return answer


@pytest.fixture(scope="module")
def deploy_graph(shapes_demo_deploy: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Original:
    """shapes-demo's deploy graph (maskrt plugins) saved with its weights in a file beside it, as onnx.save writes a
    large model: the .onnx then holds the graph's structure, which the edits hit, and names the weights' file."""
    folder = tmp_path_factory.mktemp("fuzz-onnx")
    path = folder / "deploy.onnx"
    onnx.save(onnx.load(shapes_demo_deploy("maskrt")), path, save_as_external_data=True, location="deploy.onnx.data")
    return Original(path, path.read_bytes())


@FUZZ
@given(data=st.data())
def test_onnx_files(deploy_graph: Original, capfd: pytest.CaptureFixture[str], data: st.DataObject) -> None:
    damaged_path = deploy_graph.path.with_name("damaged.onnx")  # beside the weights' file, which it names
    damaged_path.write_bytes(data.draw(damaged(deploy_graph.data)))

    def read() -> object:
        model = read_onnx(damaged_path)
        return read_deploy_record(model, damaged_path), read_precision_record(model, damaged_path)

    assert_answers_or_refuses(read, capfd)


@FUZZ
@given(data=st.data())
def test_deploy_records(deploy_graph: Original, capfd: pytest.CaptureFixture[str], data: st.DataObject) -> None:
    """The deploy record in a graph's metadata, changed where it is JSON."""
    model = onnx.load(deploy_graph.path, load_external_data=False)
    write_metadata(model, DEPLOY_KEY, data.draw(json_changed(read_metadata(model, DEPLOY_KEY))))
    assert_answers_or_refuses(lambda: read_deploy_record(model, "deploy.onnx"), capfd)


@pytest.fixture(scope="module")
def engine_json(tmp_path_factory: pytest.TempPathFactory) -> Original:
    engine = shapes_demo_engine(tmp_path_factory.mktemp("fuzz-engine") / "model.engine")
    return Original(engine, engine.with_name("model.engine.json").read_bytes())


@FUZZ
@given(data=st.data())
def test_engine_json_files(engine_json: Original, capfd: pytest.CaptureFixture[str], data: st.DataObject) -> None:
    engine_json.path.with_name("model.engine.json").write_bytes(data.draw(damaged(engine_json.data)))
    assert_answers_or_refuses(lambda: read_engine_record(engine_json.path), capfd)


@FUZZ
@given(data=st.data())
def test_engine_records(engine_json: Original, capfd: pytest.CaptureFixture[str], data: st.DataObject) -> None:
    changed = data.draw(json_changed(json.loads(engine_json.data)))
    assert_answers_or_refuses(lambda: parse_engine_record(changed, "model.engine.json"), capfd)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Original]:
    """A shapes image as PNG and as JPEG."""
    bgr = cv2.cvtColor(render_sample(0, 0, 64)[0], cv2.COLOR_RGB2BGR)
    folder = tmp_path_factory.mktemp("fuzz-image")
    made = {}
    for suffix in (".png", ".jpg"):
        cv2.imwrite(str(folder / f"image{suffix}"), bgr)
        made[suffix] = Original(folder / f"image{suffix}", (folder / f"image{suffix}").read_bytes())
    return made


@FUZZ
@given(suffix=st.sampled_from([".png", ".jpg"]), data=st.data())
def test_image_files(images: dict[str, Original], tmp_path: Path, capfd: pytest.CaptureFixture[str], suffix: str, data: st.DataObject) -> None:
    path = tmp_path / f"image{suffix}"
    path.write_bytes(data.draw(damaged(images[suffix].data, hot=(0, 256))))
    rgb = assert_answers_or_refuses(lambda: read_rgb(path), capfd)
    assert rgb is None or (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Original]:
    """Eight 64x48 frames of shapes as an MP4 (mp4v) and as an AVI (MJPG)."""
    folder = tmp_path_factory.mktemp("fuzz-video")
    made = {}
    for suffix, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
        path = folder / f"clip{suffix}"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), 10.0, (64, 48))
        for index in range(8):
            writer.write(cv2.cvtColor(render_sample(1, index, 64)[0][:48], cv2.COLOR_RGB2BGR))
        writer.release()
        made[suffix] = Original(path, path.read_bytes())
    return made


@FUZZ
@given(suffix=st.sampled_from([".mp4", ".avi"]), data=st.data())
def test_video_files(videos: dict[str, Original], tmp_path: Path, capfd: pytest.CaptureFixture[str], suffix: str, data: st.DataObject) -> None:
    """What `maskrt infer` does with a video: find_sources opens it, read_frames decodes and letterboxes every frame."""
    path = tmp_path / f"clip{suffix}"
    path.write_bytes(data.draw(damaged(videos[suffix].data)))
    letterboxing = SimpleNamespace(prepare=lambda bgr: letterbox(bgr[..., ::-1], (128, 128), (0.485, 0.456, 0.406)))

    def read() -> object:
        return list(read_frames(find_sources([str(path)]), letterboxing, threading.Event()))  # type: ignore[arg-type]

    frames = assert_answers_or_refuses(read, capfd)
    assert frames is None or all(frame.error is None and frame.canvas is not None for frame in frames)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Original:
    """`maskrt shapes`' dataset of two images: its folder and its instances.json."""
    folder = tmp_path_factory.mktemp("fuzz-coco") / "shapes"
    write_dataset(folder, count=2, seed=0, size=64)
    return Original(folder, (folder / "instances.json").read_bytes())


def assert_each_coco_reader_answers_or_refuses(folder: Path, annotations: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Every reader of an instances json, each on its own: the image ids (calibration, infer), the listing of an
    image folder with them (calibration, check), and the check's ground truth for pycocotools."""
    for read in (
        lambda: read_image_ids(annotations),
        lambda: list_images(folder / "images", annotations),
        lambda: load_ground_truth(annotations),
    ):
        assert_answers_or_refuses(read, capfd)


@FUZZ
@given(data=st.data())
def test_instances_json_files(dataset: Original, tmp_path: Path, capfd: pytest.CaptureFixture[str], data: st.DataObject) -> None:
    annotations = tmp_path / "instances.json"
    annotations.write_bytes(data.draw(damaged(dataset.data)))
    assert_each_coco_reader_answers_or_refuses(dataset.path, annotations, capfd)


@FUZZ
@given(data=st.data())
def test_instances_json_structure(dataset: Original, tmp_path: Path, capfd: pytest.CaptureFixture[str], data: st.DataObject) -> None:
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(data.draw(json_changed(json.loads(dataset.data)))))
    assert_each_coco_reader_answers_or_refuses(dataset.path, annotations, capfd)
