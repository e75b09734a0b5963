"""Draws shapes-demo's predictions on val images, to look at what the model gets right and wrong.

    python scripts/draw_predictions.py --count 10 -o /tmp/shapes-predictions

Each PNG is shown 4x enlarged: filled masks and boxes of detections scoring at least --score, labelled with class and
score, and the ground-truth outlines in white.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from rich.console import Console

from maskrt.calib.shapes import write_dataset
from maskrt.check.torch_detections import image_tensor, read_rgb
from maskrt.convert import shapes_demo
from maskrt.convert.models import SHAPES_DEMO, load_model

SCALE = 4
PALETTE = {1: (255, 80, 80), 2: (80, 220, 80), 3: (80, 140, 255)}  # RGB per class

console = Console(stderr=True, highlight=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--val-seed", type=int, default=1)
    parser.add_argument("--score", type=float, default=0.5, help="lowest score drawn")
    parser.add_argument("--weights", type=Path, help="default: the checkpoint that ships with maskrt")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()

    model = load_model(SHAPES_DEMO, args.weights, None)
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        val = Path(folder) / "val"
        write_dataset(val, args.count, args.val_seed, shapes_demo.INPUT_SIZE)
        coco = COCO(str(val / "instances.json"))
        for image in coco.loadImgs(coco.getImgIds()):
            rgb = read_rgb(val / "images" / image["file_name"])
            with torch.no_grad():
                [prediction] = model([image_tensor(rgb)])
            truth = [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))]
            drawing = draw(rgb, prediction, truth, args.score)
            path = args.output / image["file_name"]
            cv2.imwrite(str(path), cv2.cvtColor(drawing, cv2.COLOR_RGB2BGR))
            console.print(f"{path}: {describe(prediction, args.score)}; {len(truth)} in the ground truth")


def draw(rgb: np.ndarray, prediction: dict[str, torch.Tensor], truth: list[np.ndarray], score: float) -> np.ndarray:
    size = (rgb.shape[1] * SCALE, rgb.shape[0] * SCALE)
    canvas = cv2.resize(rgb, size, interpolation=cv2.INTER_NEAREST)
    keep = prediction["scores"] >= score
    for box, label, value, probabilities in zip(
        prediction["boxes"][keep], prediction["labels"][keep], prediction["scores"][keep], prediction["masks"][keep, 0]
    ):
        colour = PALETTE[int(label)]
        mask = cv2.resize((probabilities.numpy() > 0.5).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        canvas[mask] = (0.5 * canvas[mask] + 0.5 * np.array(colour)).astype(np.uint8)
        x1, y1, x2, y2 = (int(round(float(v) * SCALE)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
        text = f"{shapes_demo.CLASS_NAMES[int(label)]} {float(value):.2f}"
        cv2.putText(canvas, text, (x1 + 2, max(y1 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    for mask in truth:
        enlarged = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(enlarged, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, (255, 255, 255), 1)
    return canvas


def describe(prediction: dict[str, torch.Tensor], score: float) -> str:
    keep = prediction["scores"] >= score
    names = [shapes_demo.CLASS_NAMES[int(label)] for label in prediction["labels"][keep]]
    return f"{len(names)} detections ({', '.join(names) or 'none'})"


if __name__ == "__main__":
    main()
