"""The synthetic shapes dataset: circles, squares and triangles on textured backgrounds, in COCO instance format.

Image `index` of seed `seed` is drawn from its own random stream, so it is the same whatever `count` is: a val set of
100 images is the first 100 of a val set of 1000. Shapes have flat colours and are drawn without anti-aliasing, so an
instance's mask is exactly the pixels that show its colour; shapes drawn later occlude earlier ones, and an earlier
shape keeps at least MIN_VISIBLE of its area.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as coco_mask
from rich.console import Console

from maskrt.contracts.errors import BadInput
from maskrt.contracts.files import check_output_folder, staged_folder
from maskrt.runtime.coco import mask_rle
from maskrt.runtime.progress import track

# torchvision label ids: 0 is the background.
CATEGORIES = {1: "circle", 2: "square", 3: "triangle"}
MIN_SIZE = 32
MIN_VISIBLE = 0.6  # an occluded or border-cut shape keeps at least this fraction of its area
MIN_AREA = 24  # pixels
MAX_SHAPES = 6
_SUBPIXEL_BITS = 4  # cv2 drawing with fractional vertex coordinates
_MIN_CONTRAST = 80.0  # RGB distance between a shape and the background it covers


@dataclass
class Instance:
    category_id: int
    color: tuple[int, int, int]  # RGB
    mask: np.ndarray  # bool [H, W], visible pixels only
    full_area: int  # pixels of the whole shape, before occlusion and the image border cut it


def render_sample(seed: int, index: int, size: int) -> tuple[np.ndarray, list[Instance]]:
    """Image `index` of the dataset `seed`: RGB uint8 [size, size, 3] and its instances, bottom to top."""
    _check_settings("shapes", seed, size)
    if index < 0:
        raise BadInput(f"shapes: image index must be >= 0, got {index}")
    rng = np.random.default_rng([seed, index])
    image = _background(rng, size)
    instances: list[Instance] = []
    for _ in range(int(rng.integers(1, MAX_SHAPES + 1))):
        for _attempt in range(20):
            placed = _try_place(rng, image, instances, size)
            if placed is not None:
                for other in instances:
                    other.mask &= ~placed.mask
                instances.append(placed)
                image[placed.mask] = placed.color
                break
    return image, instances


def write_dataset(output: Path, count: int, seed: int, size: int = 128, console: Console | None = None) -> None:
    """Writes `count` images of dataset `seed` to output/images/*.png and output/instances.json (COCO, RLE masks).

    Besides COCO's fields, each annotation carries the shape's RGB "color", the colour of every pixel of its mask.

    The folder appears whole or not at all: it is written beside `output` and renamed into place.
    """
    if count <= 0:
        raise BadInput(f"{output}: image count must be positive, got {count}")
    _check_settings(str(output), seed, size)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise BadInput(f"{output}: already exists and is not an empty folder; choose a new output folder")
    check_output_folder(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with staged_folder(output) as staging:
        (staging / "images").mkdir()
        images: list[dict[str, object]] = []
        annotations: list[dict[str, object]] = []
        for index in track(range(count), "shapes", console, unit="images"):
            image, instances = render_sample(seed, index, size)
            file_name = f"{index:06d}.png"
            cv2.imwrite(str(staging / "images" / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            images.append({"id": index + 1, "file_name": file_name, "height": size, "width": size})
            for instance in instances:
                annotations.append(_annotation(len(annotations) + 1, index + 1, instance))
        dataset = {
            "info": {"description": f"maskrt synthetic shapes, seed {seed}", "seed": seed, "count": count, "size": size},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": name, "supercategory": "shape"} for i, name in CATEGORIES.items()],
        }
        (staging / "instances.json").write_text(json.dumps(dataset), encoding="utf-8")
    if console is not None:
        console.print(f"{output}: {count} images, {len(annotations)} instances")


def _check_settings(where: str, seed: int, size: int) -> None:
    if seed < 0:
        raise BadInput(f"{where}: seed must be >= 0, got {seed}")
    if size < MIN_SIZE:
        raise BadInput(f"{where}: image size must be at least {MIN_SIZE} pixels, got {size}")


def _annotation(annotation_id: int, image_id: int, instance: Instance) -> dict[str, object]:
    segmentation = mask_rle(instance.mask)
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": instance.category_id,
        "segmentation": segmentation,
        "area": int(coco_mask.area(segmentation)),
        "bbox": [float(v) for v in coco_mask.toBbox(segmentation)],
        "iscrowd": 0,
        "color": list(instance.color),
    }


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    # A colour gradient, blotches of low-frequency noise, sometimes stripes, and fine grain.
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xs * math.cos(angle) + ys * math.sin(angle) + 1.5) / 3.0
    start, end = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    image = start + ramp[..., None] * (end - start)
    cells = int(rng.integers(3, 9))
    blotches = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
    image += cv2.resize(blotches, (size, size), interpolation=cv2.INTER_CUBIC) * rng.uniform(10, 40)
    if rng.random() < 0.5:
        period = rng.uniform(4, 16) / size
        phase = xs * math.cos(angle + 1.0) + ys * math.sin(angle + 1.0)
        image += (np.sin(2 * math.pi * phase / period) * rng.uniform(8, 30))[..., None]
    image += rng.normal(0, rng.uniform(2, 8), image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _try_place(
    rng: np.random.Generator, image: np.ndarray, instances: list[Instance], size: int
) -> Instance | None:
    """A random shape that keeps MIN_VISIBLE of itself inside the image and of every shape it covers, else None."""
    category_id = int(rng.integers(1, len(CATEGORIES) + 1))
    radius = rng.uniform(0.08, 0.25) * size  # circumradius
    centre = rng.uniform(-0.1, 1.1, 2) * size
    angle = rng.uniform(0, 2 * math.pi)
    # Drawn on a canvas with a margin, so the part cut off by the image border is counted too.
    margin = int(math.ceil(radius)) + 2
    canvas = np.zeros((size + 2 * margin, size + 2 * margin), np.uint8)
    centre_on_canvas = centre + margin
    if CATEGORIES[category_id] == "circle":
        scale = 1 << _SUBPIXEL_BITS
        cx, cy = (centre_on_canvas * scale).round().astype(int)
        cv2.circle(canvas, (cx, cy), int(round(radius * scale)), 1, -1, cv2.LINE_8, _SUBPIXEL_BITS)
    else:
        corners = 4 if CATEGORIES[category_id] == "square" else 3
        turns = angle + 2 * math.pi * np.arange(corners) / corners
        points = centre_on_canvas + radius * np.stack([np.cos(turns), np.sin(turns)], axis=1)
        polygon = (points * (1 << _SUBPIXEL_BITS)).round().astype(np.int32)
        cv2.fillPoly(canvas, [polygon], 1, cv2.LINE_8, _SUBPIXEL_BITS)
    mask = canvas[margin : margin + size, margin : margin + size].astype(bool)
    full_area = int(canvas.sum())
    if not _visible_enough(int(mask.sum()), full_area):
        return None
    if any(not _visible_enough(int((other.mask & ~mask).sum()), other.full_area) for other in instances):
        return None
    covered = image[mask].astype(np.float32).mean(axis=0)
    for _attempt in range(10):
        color = rng.integers(0, 256, 3)
        if np.linalg.norm(color - covered) >= _MIN_CONTRAST:
            return Instance(category_id, (int(color[0]), int(color[1]), int(color[2])), mask, full_area)
    return None


def _visible_enough(visible: int, full_area: int) -> bool:
    return visible >= MIN_AREA and visible >= MIN_VISIBLE * full_area
