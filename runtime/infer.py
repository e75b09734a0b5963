"""`maskrt infer`: a deploy graph or engine over images, folders, globs, videos and cameras.

OUT gets one overlay per image (boxes, class names, translucent masks) under the image's own file name, one video
per video or camera input at the input's frame rate, results.json (COCO results format, RLE masks) and timing.json
(per frame and per stage). A reader thread decodes and letterboxes the next frames while the model runs.
"""

from __future__ import annotations

import glob
import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.console import Console

from maskrt.contracts.errors import BadInput
from maskrt.contracts.files import check_output_folder, write_atomically
from maskrt.contracts.signals import deferred_interrupts
from maskrt.runtime.bench import percentiles
from maskrt.runtime.opencv_log import REASON_CHARS, decoder_messages, reason
from maskrt.runtime.predictor import Detections, Predictor
from maskrt.runtime.preprocess import Letterbox, read_bgr
from maskrt.runtime.progress import track

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
MP4_SUFFIXES = (".mp4", ".mov", ".m4v")  # ISO base media files, whose index FFmpeg needs to open them
QUEUE_FRAMES = 4  # decoded frames waiting for the model: enough to hide decoding, little memory
DEFAULT_FPS = 30.0  # for a stream that does not say its frame rate
MASK_ALPHA = 0.5


@dataclass(frozen=True)
class Source:
    """One thing to read: an image file, a video file or a camera."""

    kind: str  # "image", "video" or "camera"
    path: Path | None = None
    camera: int | None = None
    frames: int = 0  # the frame count a video announces (0: none, or not a video)

    @property
    def name(self) -> str:
        return f"camera {self.camera}" if self.path is None else str(self.path)


@dataclass
class Frame:
    """A decoded and letterboxed frame, or the reason an image could not be read."""

    source: Source
    order: int  # 0-based place among everything read: the input order of images, the frame index of one video
    pixels: np.ndarray | None = None  # BGR uint8, as OpenCV reads and writes
    canvas: np.ndarray | None = None
    box: Letterbox | None = None
    read_ms: float = 0.0
    preprocess_ms: float = 0.0
    error: str | None = None  # why the image was skipped
    warning: str | None = None  # something to tell about the source after this frame
    last: bool = True  # the last frame of its source
    fps: float = DEFAULT_FPS  # of its video or camera


@dataclass
class Outputs:
    """What a run wrote, and the counts its summary reports."""

    folder: Path
    results: list[dict[str, Any]] = field(default_factory=list)
    timings: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    videos: dict[Source, tuple[Any, Path, Path]] = field(default_factory=dict)  # writer, partial file, final file
    names: set[str] = field(default_factory=set)


def infer(
    model: Path,
    inputs: list[str],
    output: Path,
    score_threshold: float = 0.5,
    annotations: Path | None = None,
    console: Console | None = None,
    **backend_options: Any,
) -> Outputs:
    """Runs `model` over `inputs` and writes the folder `output` (see the module's docstring).

    BadInput when no input could be read (nothing is written then). Stopped by Ctrl-C or SIGTERM, it finishes what
    it wrote (each video closed, results.json and timing.json of the frames done), says how far it got, and raises
    the KeyboardInterrupt (or Terminated) again."""
    sources = find_sources(inputs)
    check_output_folder(output)
    folders = {Path(text).resolve() for text in inputs} | {s.path.parent.resolve() for s in sources if s.path is not None}
    if output.resolve() in folders:
        raise BadInput(f"{output}: holds the inputs, whose names the overlays take; choose another output folder")
    image_ids = annotation_ids(annotations) if annotations is not None else None
    predictor = Predictor(model, score_threshold=score_threshold, channels="bgr", console=console, **backend_options)
    info = predictor.info
    if console is not None:
        console.print(f"infer: {model} ({info.plugins} plugins, {info.precision}, batch {info.batch}) on {len(sources)} input(s)")
    outputs = Outputs(output)
    started = time.perf_counter()
    interrupted: KeyboardInterrupt | None = None
    try:
        _run_all(sources, predictor, outputs, image_ids, console)
    except KeyboardInterrupt as signalled:  # Ctrl-C, or SIGTERM (Terminated): what was done is written below
        interrupted = signalled
    finally:
        # A second Ctrl-C waits until the videos are whole files; any other failure leaves them whole too.
        with deferred_interrupts():
            for source in list(outputs.videos):
                _close_video(outputs, source)
    elapsed = time.perf_counter() - started
    if interrupted is None and not outputs.timings and outputs.skipped:
        more = " ..." if len(outputs.skipped) > 3 else ""
        raise BadInput(f"none of the {len(outputs.skipped)} input image(s) is readable: {', '.join(outputs.skipped[:3])}{more}")
    with deferred_interrupts():
        output.mkdir(parents=True, exist_ok=True)
        write_atomically(output / "results.json", json.dumps(outputs.results).encode())
        write_atomically(output / "timing.json", json.dumps(timing_summary(outputs.timings, elapsed), indent=1).encode())
    if console is not None:
        if outputs.skipped:
            more = " ..." if len(outputs.skipped) > 5 else ""
            _warn(console, f"skipped {len(outputs.skipped)} unreadable image(s): {', '.join(outputs.skipped[:5])}{more}")
        fps = len(outputs.timings) / elapsed if elapsed > 0 else 0.0
        done = f"{len(outputs.timings)} frames at {fps:.1f} frames/s, {len(outputs.results)} detections; wrote {output}"
        console.print(f"infer: {'stopped after ' if interrupted else ''}{done}", style="yellow" if interrupted else None)
    if interrupted is not None:
        raise interrupted
    return outputs


def _run_all(
    sources: list[Source], predictor: Predictor, outputs: Outputs, image_ids: dict[str, int] | None, console: Console | None
) -> None:
    """Every frame of `sources` through the model in batches, each batch's overlays written as it is done."""
    stop = threading.Event()
    pending: list[Frame] = []
    try:
        frames = read_ahead(read_frames(sources, predictor, stop), stop)
        for frame in track(frames, "infer", console, total=_frame_count(sources), unit="frames"):
            if frame.error is not None:
                _warn(console, frame.error)
                outputs.skipped.append(frame.source.name)
                continue
            pending.append(frame)
            end_of_stream = frame.last and frame.source.kind != "image"
            if len(pending) == predictor.info.batch or end_of_stream:
                _run(pending, predictor, outputs, image_ids, console)
            if end_of_stream:
                _close_video(outputs, frame.source)
            if frame.warning is not None:
                _warn(console, frame.warning)
        _run(pending, predictor, outputs, image_ids, console)
    finally:
        stop.set()


def find_sources(inputs: list[str]) -> list[Source]:
    """Images, folders (their images, by name), globs, videos and camera indices, in the order given.

    ValueError naming an input that is none of these, or a video or camera that cannot be opened."""
    sources: list[Source] = []
    for text in inputs:
        path = Path(text)
        if text.isdigit() and not path.exists():
            sources.append(_camera(int(text)))
        elif path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise BadInput(f"{path}: no images in this folder ({' '.join(IMAGE_SUFFIXES)})")
            sources += [Source("image", p) for p in images]
        elif path.is_file():
            sources.append(_file_source(path))
        elif glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text))
            known = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES]
            if not known:
                raise BadInput(f"{text}: matches no image or video files")
            sources += [_file_source(p) for p in known]
        else:
            raise BadInput(f"{text}: no such file or folder, and not a camera index")
    return sources


def _file_source(path: Path) -> Source:
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        return Source("image", path)
    with decoder_messages() as printed:  # OpenCV's own AVI reader, which it tries where FFmpeg fails, prints
        capture = cv2.VideoCapture(str(path))
        try:
            opened = capture.isOpened()
            first = opened and capture.read()[0]
            frames = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        finally:
            capture.release()
    if not opened:
        raise BadInput(f"{path}: cannot be read as a video ({_unopened(path, printed)})")
    if not first:
        raise BadInput(f"{path}: cannot be read as a video (OpenCV decodes no first frame){reason(printed)}")
    return Source("video", path, frames=frames)


def _unopened(path: Path, printed: list[str]) -> str:
    """Why OpenCV opened no stream: in the words FFmpeg would have printed (it is kept quiet: runtime/opencv_log.py),
    else those of OpenCV's own reader."""
    size = path.stat().st_size
    if size == 0:
        return "an empty file"
    if path.suffix.lower() in MP4_SUFFIXES and not _has_mp4_index(path, size):
        return "no 'moov' index, which an MP4 writer adds last: the file was cut short or is still being written"
    return f"OpenCV finds no video stream in it{'; ' + printed[0][:REASON_CHARS] if printed else ''}"


def _has_mp4_index(path: Path, size: int) -> bool:
    """Whether the top level of an MP4/QuickTime file, a sequence of boxes (32-bit size, 4-byte type), has 'moov'."""
    position = 0
    with path.open("rb") as file:
        while position + 8 <= size:
            file.seek(position)
            header = file.read(16)
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if kind == b"moov":
                return True
            if length == 1 and len(header) == 16:  # a 64-bit size follows the type
                length = int.from_bytes(header[8:16], "big")
            if length < 8:  # 0: the box runs to the end of the file; below 8: not a box
                return False
            position += length
    return False


def _camera(index: int) -> Source:
    capture = cv2.VideoCapture(index)
    try:
        if not capture.isOpened():
            raise BadInput(f"camera {index}: no camera at this index (OpenCV could not open it)")
    finally:
        capture.release()
    return Source("camera", camera=index)


def _frame_count(sources: list[Source]) -> int | None:
    """Images plus the frames the videos announce; None with a camera, which has no end."""
    if any(source.kind == "camera" for source in sources):
        return None
    return sum(source.frames if source.kind == "video" else 1 for source in sources)


def read_frames(sources: list[Source], predictor: Predictor, stop: threading.Event) -> Iterator[Frame]:
    """Every frame of every source, decoded (BGR) and letterboxed; an unreadable image as a frame with an error."""
    order = 0
    for source in sources:
        if stop.is_set():
            return
        if source.kind == "image":
            yield _image_frame(source, order, predictor)
            order += 1
            continue
        capture = cv2.VideoCapture(str(source.path) if source.path is not None else source.camera)  # type: ignore[arg-type]
        try:
            fps = float(capture.get(cv2.CAP_PROP_FPS)) or DEFAULT_FPS
            previous: Frame | None = None
            count = 0
            while not stop.is_set():
                started = time.perf_counter()
                ok, pixels = capture.read()
                if not ok:
                    break
                frame = Frame(source, order, pixels, read_ms=(time.perf_counter() - started) * 1e3, last=False, fps=fps)
                _letterbox(frame, predictor)
                order += 1
                count += 1
                if previous is not None:
                    yield previous  # held back one frame, so that the last one is known as the last
                previous = frame
            if previous is not None:
                previous.last = True
                if source.kind == "video" and count < source.frames and not stop.is_set():
                    previous.warning = f"{source.path}: the video ended after {count} of the {source.frames} frames it announces"
                yield previous
        finally:
            capture.release()


def _image_frame(source: Source, order: int, predictor: Predictor) -> Frame:
    assert source.path is not None
    started = time.perf_counter()
    try:
        frame = Frame(source, order, read_bgr(source.path))
    except BadInput as unreadable:
        frame = Frame(source, order, error=f"{unreadable}, skipped")
    frame.read_ms = (time.perf_counter() - started) * 1e3
    if frame.error is None:
        _letterbox(frame, predictor)
    return frame


def _letterbox(frame: Frame, predictor: Predictor) -> None:
    started = time.perf_counter()
    frame.canvas, frame.box = predictor.prepare(frame.pixels)  # type: ignore[arg-type]
    frame.preprocess_ms = (time.perf_counter() - started) * 1e3


def read_ahead(frames: Iterator[Frame], stop: threading.Event) -> Iterator[Frame]:
    """`frames`, produced by a reader thread at most QUEUE_FRAMES ahead; its exceptions are raised here."""
    waiting: queue.Queue[Frame | BaseException | None] = queue.Queue(maxsize=QUEUE_FRAMES)

    def put(item: Frame | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                waiting.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            for frame in frames:
                if not put(frame):
                    return
        except BaseException as error:  # handed to the main thread, which raises it
            put(error)
            return
        put(None)

    thread = threading.Thread(target=reader, name="maskrt-reader", daemon=True)
    thread.start()
    try:
        while (item := waiting.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _run(pending: list[Frame], predictor: Predictor, outputs: Outputs, image_ids: dict[str, int] | None, console: Console | None) -> None:
    """Runs the pending frames as one batch and writes what they give."""
    if not pending:
        return
    outputs.folder.mkdir(parents=True, exist_ok=True)  # made with the first result, so that a refused run leaves none
    detections = predictor.run_prepared([(f.canvas, f.box) for f in pending])  # type: ignore[misc]
    shares = {f"{stage}_ms": ms / len(pending) for stage, ms in predictor.last_timings_ms.items()}
    for frame, found in zip(pending, detections):
        # A stop keeps whole frames: results, overlay and timing (and a video's file, which appears as its writer
        # opens, with its record) are all written or none.
        with deferred_interrupts():
            started = time.perf_counter()
            image_id = _image_id(frame, image_ids, console)
            if image_id is not None:
                outputs.results += found.coco_results(image_id)
            _write_overlay(frame, found, outputs)
            name = frame.source.name if frame.source.kind == "image" else f"{frame.source.name}#{frame.order}"
            timing = {"name": name, "image_id": image_id, "read_ms": frame.read_ms, **shares}
            timing["preprocess_ms"] = frame.preprocess_ms + shares.get("preprocess_ms", 0.0)
            timing["write_ms"] = (time.perf_counter() - started) * 1e3
            outputs.timings.append(timing)
    pending.clear()


def _image_id(frame: Frame, image_ids: dict[str, int] | None, console: Console | None) -> int | None:
    """The frame's id in results.json: an image's id in the annotations (by file name) when they are given, else the
    frame's 0-based order. None for an image that the annotations do not list."""
    if image_ids is None or frame.source.kind != "image":
        return frame.order
    assert frame.source.path is not None
    image_id = image_ids.get(frame.source.path.name)
    if image_id is None:
        _warn(console, f"{frame.source.path}: not in the annotations, left out of results.json")
    return image_id


def annotation_ids(annotations: Path) -> dict[str, int]:
    """file_name → image id of a COCO instances json, by base name, as an images folder holds them."""
    try:
        images = json.loads(annotations.read_text(encoding="utf-8"))["images"]
        return {Path(str(image["file_name"])).name: int(image["id"]) for image in images}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BadInput(f"{annotations}: not a readable COCO instances json ({type(error).__name__}: {error})") from None


def _write_overlay(frame: Frame, found: Detections, outputs: Outputs) -> None:
    picture = draw_detections(frame.pixels, found)  # type: ignore[arg-type]
    if frame.source.kind == "image":
        assert frame.source.path is not None
        target = outputs.folder / _unique_name(outputs, frame.source.path.name)
        ok, encoded = cv2.imencode(target.suffix, picture)
        if not ok:
            raise BadInput(f"{target}: OpenCV could not encode the overlay")
        write_atomically(target, encoded.tobytes())
        return
    if frame.source not in outputs.videos:
        stem = frame.source.path.stem if frame.source.path is not None else f"camera{frame.source.camera}"
        target = outputs.folder / _unique_name(outputs, f"{stem}.mp4")
        partial = target.with_name(f".{target.stem}.tmp{os.getpid()}.mp4")
        height, width = picture.shape[:2]
        writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), frame.fps, (width, height))
        outputs.videos[frame.source] = (writer, partial, target)  # from here on, closing renames or removes it
        if not writer.isOpened():
            raise BadInput(f"{target}: OpenCV cannot write an mp4 video here")
    outputs.videos[frame.source][0].write(picture)


def _close_video(outputs: Outputs, source: Source) -> None:
    """The video's file, finished, under its own name; none when OpenCV wrote nothing of it."""
    if source in outputs.videos:
        writer, partial, target = outputs.videos.pop(source)
        writer.release()
        if partial.is_file():
            os.replace(partial, target)


def _unique_name(outputs: Outputs, name: str) -> str:
    """`name`, or name-2, name-3 ... when inputs share a file name."""
    stem, suffix = os.path.splitext(name)
    candidate, count = name, 1
    while candidate in outputs.names:
        count += 1
        candidate = f"{stem}-{count}{suffix}"
    outputs.names.add(candidate)
    return candidate


def draw_detections(bgr: np.ndarray, found: Detections) -> np.ndarray:
    """The image with translucent masks, boxes and "class score" labels, each class in its own colour."""
    picture = bgr.copy()
    for mask, label in zip(found.masks, found.labels):
        picture[mask] = (picture[mask] * (1 - MASK_ALPHA) + _colour(int(label)) * MASK_ALPHA).astype(np.uint8)
    for box, label, name, score in zip(found.boxes, found.labels, found.class_names, found.scores):
        colour = tuple(int(c) for c in _colour(int(label)))
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(picture, (x1, y1), (x2, y2), colour, 1, cv2.LINE_AA)
        text = f"{name} {score:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        top = max(y1 - text_h - baseline, 0)
        cv2.rectangle(picture, (x1, top), (x1 + text_w, top + text_h + baseline), colour, -1)
        cv2.putText(picture, text, (x1, top + text_h), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return picture


def _colour(label: int) -> np.ndarray:
    """A bright BGR colour per label, the same in every frame."""
    hue = (label * 47) % 180
    return cv2.cvtColor(np.array([[[hue, 220, 230]]], np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def timing_summary(frames: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    """timing.json: frames per second, each stage's p50/p90/p99 in ms, and every frame's own times."""
    stages = [key for key in (frames[0] if frames else {}) if key.endswith("_ms")]
    per_stage = {stage: percentiles([f[stage] for f in frames]) for stage in stages}
    fps = round(len(frames) / elapsed, 2) if elapsed > 0 else 0.0
    return {"frames": len(frames), "seconds": round(elapsed, 3), "fps": fps, "per_stage_ms": per_stage, "per_frame": frames}


def _warn(console: Console | None, message: str) -> None:
    if console is not None:
        console.print(message, style="yellow")
