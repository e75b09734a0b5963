"""A torchvision detection model's COCO detections on a dataset folder (images/ and instances.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from maskrt.check.coco_eval import coco_detections
from maskrt.contracts.errors import BadInput
from maskrt.runtime.preprocess import read_rgb
from maskrt.runtime.progress import track

BATCH = 8


def detect_dataset(model: torch.nn.Module, dataset: Path, console: Console | None = None) -> list[dict[str, object]]:
    """Runs `model` (eval mode, RGB 0..1 input, torchvision output dicts) over every image of `dataset`."""
    images = _image_list(dataset)
    detections: list[dict[str, object]] = []
    batches = range(0, len(images), BATCH)
    for start in track(batches, "detect", console, unit="batches"):
        chunk = images[start : start + BATCH]
        tensors = [image_tensor(read_rgb(dataset / "images" / name)) for _, name in chunk]
        with torch.no_grad():
            outputs = model(tensors)
        for (image_id, _), output in zip(chunk, outputs):
            detections += coco_detections(
                image_id,
                output["boxes"].numpy(),
                output["scores"].numpy(),
                output["labels"].numpy(),
                output["masks"][:, 0].numpy(),
            )
    return detections


def _image_list(dataset: Path) -> list[tuple[int, str]]:
    """(image id, file name) of every image in dataset/instances.json."""
    instances = dataset / "instances.json"
    try:
        images = json.loads(instances.read_text(encoding="utf-8"))["images"]
        return [(int(image["id"]), str(image["file_name"])) for image in images]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BadInput(f"{instances}: not a readable COCO instances json ({error})") from None


def image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """torchvision's detection input: float [3, H, W] in 0..1 from RGB uint8 [H, W, 3], contiguous (a permuted view
    would run the whole network channels-last, about 3x slower on a CPU)."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float() / 255
