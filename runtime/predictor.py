"""The Predictor: images in, detections in original pixels out, on a deploy graph or an engine.

    from maskrt.runtime.predictor import Predictor
    predictor = Predictor("deploy.onnx")            # or "model.engine"; channels="bgr" for OpenCV's frames
    detections = predictor("image.jpg")              # or a uint8 HWC array, or a list of either

Each image is letterboxed as torchvision resizes it (runtime.preprocess), run in batches of the model's batch size
(the last one padded; a dynamic-batch model runs it as it is), and its detections mapped back: boxes by torchvision's resize_boxes, masks pasted as its
paste_masks_in_image pastes them (runtime.postprocess).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np

from maskrt.contracts.errors import BadInput
from maskrt.contracts.records import OUTPUTS
from maskrt.runtime.backends import ModelInfo, open_backend
from maskrt.runtime.coco import coco_results
from maskrt.runtime.postprocess import paste_masks
from maskrt.runtime.preprocess import Letterbox, letterbox, read_rgb

Image = Union[str, "os.PathLike[str]", np.ndarray]
CHANNELS = ("rgb", "bgr")
EXPECTED_ARRAY = "a uint8 [h, w, 3] array with values 0..255 (RGB, or BGR from a Predictor made with channels='bgr')"


@dataclass
class Detections:
    """One image's detections, in its original pixels, best score first."""

    boxes: np.ndarray  # float32 [N,4] x1, y1, x2, y2
    scores: np.ndarray  # float32 [N]
    labels: np.ndarray  # int64 [N], the model's label ids (COCO category ids for COCO models)
    class_names: list[str]  # [N], each detection's class name
    masks: np.ndarray  # bool [N,h,w]
    image_size: tuple[int, int]  # (h, w)

    def __len__(self) -> int:
        return len(self.scores)

    def coco_results(self, image_id: int) -> list[dict[str, Any]]:
        """COCO results-format entries (bbox x, y, w, h; RLE segmentation), as pycocotools' loadRes reads them."""
        return coco_results(image_id, self.boxes, self.scores, self.labels, self.masks)


class Predictor:
    """A deploy graph (.onnx, ONNX Runtime) or engine (.engine, TensorRT) behind one call.

    `channels` says how the arrays it will be given are ordered, for every call: "rgb" (default) or "bgr" (OpenCV's
    frames; an array cannot tell, and BGR read as RGB swaps red and blue). Image files are read as they are.
    Detections scoring below `score_threshold` are dropped (the model's own threshold applies first).
    `backend_options` go to the backend (ONNX Runtime: device "auto" | "cpu" | "cuda", threads; TensorRT:
    cuda_graph, verbose, console), each taking its own (runtime.backends.open_backend).
    """

    def __init__(self, model: str | os.PathLike[str], score_threshold: float = 0.5, channels: str = "rgb", **backend_options: Any):
        if channels not in CHANNELS:
            raise BadInput(f"channels must be 'rgb' or 'bgr', got {channels!r}")
        if not 0.0 <= score_threshold <= 1.0:
            raise BadInput(f"score_threshold must be between 0 and 1, got {score_threshold}")
        self.backend = open_backend(Path(model), **backend_options)
        self.info: ModelInfo = self.backend.info
        self.score_threshold = score_threshold
        self.channels = channels
        self.last_timings_ms: dict[str, float] = {}

    def __call__(self, images: Image | Sequence[Image]) -> Detections | list[Detections]:
        """Detections of one image (a path or a uint8 HWC array), or a list of them for a list or tuple of images."""
        single = isinstance(images, (str, os.PathLike, np.ndarray))
        if not single and not isinstance(images, (list, tuple)):
            raise BadInput(f"expected an image path, {EXPECTED_ARRAY} or a list of them, got {_described(images)}")
        batch: list[Image] = [images] if single else list(images)  # type: ignore[list-item, arg-type]
        timings: dict[str, float] = {}
        started = time.perf_counter()
        prepared = [self.prepare(image) for image in batch]
        timings["preprocess"] = (time.perf_counter() - started) * 1e3
        results: list[Detections] = []
        for start in range(0, len(prepared), self.info.batch):
            results += self.run_prepared(prepared[start : start + self.info.batch])
            for stage, ms in self.last_timings_ms.items():
                timings[stage] = timings.get(stage, 0.0) + ms
        self.last_timings_ms = timings
        return results[0] if single else results

    def prepare(self, image: Image) -> tuple[np.ndarray, Letterbox]:
        """The letterboxed canvas [3,H,W] and where the image lies in it; ValueError saying what was expected."""
        return letterbox(self.rgb(image), self.info.input_size, self.info.image_mean)

    def rgb(self, image: Image) -> np.ndarray:
        """RGB uint8 [h,w,3] from a path or an array in this predictor's channel order."""
        if isinstance(image, (str, os.PathLike)):
            return read_rgb(Path(image))
        pixels = checked_pixels(image)
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB) if self.channels == "bgr" else pixels

    def run_prepared(self, prepared: Sequence[tuple[np.ndarray, Letterbox]]) -> list[Detections]:
        """One batch of prepared images (at most the model's batch size); the rest of the batch is padding, but for
        a dynamic-batch model, which runs the images given.

        `last_timings_ms` gets "preprocess" (the batch put together), the backend's stages and "postprocess". A
        backend that pastes masks where it ran (TensorRT: on the GPU) keeps them there and pastes them."""
        started = time.perf_counter()
        feeds = batch_feeds(prepared, self.info)
        timings = {"preprocess": (time.perf_counter() - started) * 1e3}
        device_paste = getattr(self.backend, "paste_masks", None) if getattr(self.backend, "gpu_paste", False) else None
        outputs = self.backend.run(feeds, OUTPUTS if device_paste is None else OUTPUTS[:4])
        timings.update(self.backend.last_timings_ms)
        started = time.perf_counter()
        found = [
            detections_from_outputs(
                outputs, i, box, self.info, self.score_threshold, None if device_paste is None else functools.partial(device_paste, i)
            )
            for i, (_, box) in enumerate(prepared)
        ]
        timings["postprocess"] = (time.perf_counter() - started) * 1e3
        self.last_timings_ms = timings
        return found


def checked_pixels(image: object) -> np.ndarray:
    """The array itself when it is uint8 [h,w,3]; otherwise BadInput with a sentence saying what is expected."""
    expected = EXPECTED_ARRAY
    if not isinstance(image, np.ndarray):
        raise BadInput(f"expected an image path or {expected}, got {_described(image)}")
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.size and float(np.nanmax(image)) <= 1.0:
            raise BadInput(
                f"got a {image.dtype} image with values in 0..1, as torchvision models take; maskrt expects {expected}: "
                "pass (image * 255).round().astype(np.uint8)"
            )
        raise BadInput(f"got a {image.dtype} array; expected {expected}")
    if image.ndim != 3 or image.shape[2] != 3:
        hint = " (channels first: pass image.transpose(1, 2, 0))" if image.ndim == 3 and image.shape[0] == 3 else ""
        raise BadInput(f"got an array of shape {list(image.shape)}{hint}; expected {expected}")
    return image


def _described(value: object) -> str:
    """What was given instead of an image, in words: "None", "bytes (an encoded file: ...)", "an int", "a dict"."""
    if value is None:
        return "None"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{type(value).__name__} (an encoded file: decode it with cv2.imdecode first, or pass its path)"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def batch_feeds(prepared: Sequence[tuple[np.ndarray, Letterbox]], info: ModelInfo) -> dict[str, np.ndarray]:
    """The graph's inputs for up to `info.batch` prepared images: a dynamic-batch model's for those images, a static
    one's with the rest of the batch padded with empty canvases."""
    if not 0 < len(prepared) <= info.batch:
        raise BadInput(f"a batch holds 1 to {info.batch} images, got {len(prepared)}")
    height, width = info.input_size
    batch = len(prepared) if info.dynamic_batch else info.batch
    images = np.empty((batch, 3, height, width), np.float32)
    images[len(prepared) :] = (np.asarray(info.image_mean, np.float32) * 255).reshape(3, 1, 1)
    sizes = np.tile(np.array([height, width], np.int32), (batch, 1))
    for i, (canvas, box) in enumerate(prepared):
        images[i] = canvas
        sizes[i] = box.resized
    return {"images": images, "image_sizes": sizes}


def detections_from_outputs(
    outputs: dict[str, np.ndarray],
    index: int,
    box: Letterbox,
    info: ModelInfo,
    score_threshold: float,
    paste: Callable[[np.ndarray, np.ndarray, tuple[int, int]], np.ndarray] | None = None,
) -> Detections:
    """Image `index` of a batch's outputs, its detections scoring at least `score_threshold`, in original pixels.

    `paste(rows, boxes, image_size)` pastes the masks of those detection rows where the backend keeps them;
    without it, outputs["masks"] are pasted here (runtime.postprocess)."""
    count = int(outputs["num_detections"][index, 0])
    keep = np.flatnonzero(outputs["scores"][index, :count] >= score_threshold)
    boxes = outputs["boxes"][index, keep]
    if info.single_input:
        # Such a graph clips to the whole canvas; torchvision would have clipped to the image.
        height, width = box.resized
        boxes = np.minimum(boxes, np.array([width, height, width, height], np.float32))
    boxes = box.to_original(boxes)
    labels = outputs["classes"][index, keep].astype(np.int64)
    return Detections(
        boxes=boxes,
        scores=outputs["scores"][index, keep].astype(np.float32),
        labels=labels,
        class_names=[info.class_name(int(label)) for label in labels],
        masks=paste_masks(outputs["masks"][index, keep], boxes, box.original) if paste is None else paste(keep, boxes, box.original),
        image_size=box.original,
    )
