"""The runtime against torchvision on a CPU, side by side in one run at one thread count.

1. Mask pasting: runtime.postprocess.paste_masks against torchvision's paste_masks_in_image, 100 masks on an
   800x1344 image (each mask's IoU with torchvision's, and the time of each).
2. End to end on shapes-demo: the Predictor on the ONNX Runtime backend (letterbox, deploy graph, boxes back,
   masks pasted) against torchvision eager model(images) (its transform, the model, its paste), per image, on the
   same shapes val images, for both plugin modes.

    python scripts/bench_runtime.py [--threads 2] [--images 40] [--repeats 3]

Timings interleave the contenders image by image, so that a machine shared with other work slows all of them alike;
each figure is the median over the repeats of the mean time per image.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskrt.calib.shapes import render_sample
from maskrt.cli.main import main as maskrt
from maskrt.convert.models import load_model
from maskrt.runtime.postprocess import paste_masks
from maskrt.runtime.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_postprocess import detector_boxes, mask_head_like, mask_ious  # noqa: E402


def paste_comparison(repeats: int) -> None:
    height, width = 800, 1344
    masks, boxes = mask_head_like(100, 28, seed=0), detector_boxes(100, height, width, seed=1)
    masks_t, boxes_t = torch.from_numpy(masks)[:, None], torch.from_numpy(boxes)
    theirs = (paste_masks_in_image(masks_t, boxes_t, (height, width))[:, 0] > 0.5).numpy()
    ious = mask_ious(paste_masks(masks, boxes, (height, width)), theirs)
    times = _interleaved(
        {
            "torchvision paste_masks_in_image > 0.5": lambda: paste_masks_in_image(masks_t, boxes_t, (height, width))[:, 0] > 0.5,
            "maskrt paste_masks": lambda: paste_masks(masks, boxes, (height, width)),
        },
        [None],
        repeats,
    )
    print(f"\npaste, 100 masks on {height}x{width}: mask IoU with torchvision's min {ious.min():.6f}, mean {ious.mean():.6f}")
    _table(times, "torchvision paste_masks_in_image > 0.5")


def end_to_end(threads: int, count: int, repeats: int, folder: Path) -> None:
    exported = folder / "shapes-demo.onnx"
    assert maskrt(["export", "--model", "shapes-demo", "-o", str(exported)]) == 0
    predictors = {}
    for plugins in ("native", "maskrt"):
        deploy = folder / f"deploy.{plugins}.onnx"
        assert maskrt(["convert", str(exported), "--surgery-only", "--plugins", plugins, "-o", str(deploy)]) == 0
        predictors[plugins] = Predictor(deploy, score_threshold=0.0, device="cpu", threads=threads)
    model = load_model("shapes-demo", None, None)
    images = [render_sample(1, i, 128)[0] for i in range(count)]

    def torchvision_eager(image: np.ndarray) -> object:
        with torch.no_grad():
            return model([torch.from_numpy(image).permute(2, 0, 1).float() / 255])

    contenders: dict[str, Callable[[np.ndarray], object]] = {"torchvision eager model([image])": torchvision_eager}
    for plugins, predictor in predictors.items():
        contenders[f"Predictor, ONNX Runtime, --plugins {plugins}"] = predictor
    for contender in contenders.values():
        contender(images[0])  # first runs allocate and plan
    print(f"\nend to end on shapes-demo (128x128), {count} val images, {threads} threads, per image:")
    _table(_interleaved(contenders, images, repeats), "torchvision eager model([image])")


def _interleaved(contenders: dict[str, Callable[..., object]], inputs: list[object], repeats: int) -> dict[str, float]:
    """Median over repeats of the mean seconds per input; each input runs on every contender in turn."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        spent = dict.fromkeys(contenders, 0.0)
        for item in inputs:
            for name, contender in contenders.items():
                started = time.perf_counter()
                contender(item) if item is not None else contender()
                spent[name] += time.perf_counter() - started
        for name in contenders:
            samples[name].append(spent[name] / len(inputs))
    return {name: statistics.median(values) for name, values in samples.items()}


def _table(times: dict[str, float], reference: str) -> None:
    for name, seconds in times.items():
        print(f"  {name:45s} {seconds * 1e3:9.2f} ms   {times[reference] / seconds:5.2f}x torchvision's speed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--images", type=int, default=40, help="shapes val images (default 40)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    paste_comparison(args.repeats)
    with tempfile.TemporaryDirectory(prefix="maskrt-bench-") as folder:
        end_to_end(args.threads, args.images, args.repeats, Path(folder))


if __name__ == "__main__":
    main()
