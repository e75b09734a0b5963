"""Trains shapes-demo (convert/shapes_demo.py) from scratch on the CPU and records its val box and mask AP.

    python scripts/train_shapes.py

Every step draws a fresh batch of the shapes dataset `--seed` (image i of it is what `maskrt shapes --seed S` writes as
image i), so the model never sees an image twice. The same seed gives the same weights on the same machine and thread
count. The checkpoint is stored in FP16; the AP recorded beside it (shapes_demo.json) is that of the stored weights
on the val set `--val-seed`, which tests/test_shapes_demo.py regenerates and re-evaluates.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import save
from torchvision.ops import masks_to_boxes

from maskrt.calib.shapes import render_sample, write_dataset
from maskrt.check.coco_eval import CocoAP, evaluate
from maskrt.check.torch_detections import detect_dataset, image_tensor
from maskrt.convert import shapes_demo
from maskrt.contracts.files import write_atomically
from maskrt.convert.models import SHAPES_DEMO, load_model

WARMUP_STEPS = 200
LOG_EVERY = 100  # a line of loss for logs, where the progress bar is not drawn
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
MAX_GRAD_NORM = 10.0  # from-scratch training sees large gradients in its first steps

console = Console(stderr=True, highlight=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.04, help="peak SGD learning rate, after a linear warm-up")
    parser.add_argument("--seed", type=int, default=0, help="training images and initial weights")
    parser.add_argument("--val-seed", type=int, default=1)
    parser.add_argument("--val-count", type=int, default=200)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a busy 2-core machine, two OpenMP threads spin-wait on each other and "
        "train several times slower)",
    )
    parser.add_argument("-o", "--output", type=Path, default=shapes_demo.CHECKPOINT)
    args = parser.parse_args()
    if min(args.steps, args.batch, args.val_count, args.threads) <= 0:
        parser.error("--steps, --batch, --val-count and --threads must be positive")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = shapes_demo.build_model()
    started = time.perf_counter()
    load_samples = train(model, args.seed, args.steps, args.batch, args.lr)
    seconds = time.perf_counter() - started
    console.print(f"trained {args.steps} steps in {seconds / 60:.1f} min, mean load average {_mean(load_samples):.2f}")

    save_fp16(model, args.output)
    stored = load_model(SHAPES_DEMO, args.output, None)  # evaluate what ships: FP16 weights cast back to FP32
    with tempfile.TemporaryDirectory() as folder:
        val = Path(folder) / "val"
        write_dataset(val, args.val_count, args.val_seed, shapes_demo.INPUT_SIZE, console)
        ap = evaluate(val / "instances.json", detect_dataset(stored, val, console))
    console.print(f"val ({args.val_count} images, seed {args.val_seed}): box AP {ap.box:.3f}, mask AP {ap.mask:.3f}")
    write_metrics(args, ap, seconds, load_samples)


def train(model: torch.nn.Module, seed: int, steps: int, batch: int, lr: float) -> list[float]:
    """SGD with a linear warm-up and cosine decay; returns the 1-minute load average sampled during training."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, steps))
    load_samples = []
    columns = (
        TextColumn("train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    smoothed = math.nan
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=steps, loss=smoothed)
        for step in range(steps):
            images, targets = training_batch(seed, step, batch)
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            schedule.step()
            value = float(loss.detach())
            smoothed = value if math.isnan(smoothed) else 0.98 * smoothed + 0.02 * value
            progress.update(task, advance=1, loss=smoothed)
            if step % LOG_EVERY == 0:
                load_samples.append(os.getloadavg()[0])
                progress.console.print(f"step {step}: loss {smoothed:.3f}, lr {schedule.get_last_lr()[0]:.4f}")
    model.eval()
    return load_samples


def training_batch(seed: int, step: int, batch: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Images step*batch .. (step+1)*batch-1 of the shapes dataset `seed`, as torchvision's training inputs."""
    size = shapes_demo.INPUT_SIZE
    images, targets = [], []
    for index in range(step * batch, (step + 1) * batch):
        image, instances = render_sample(seed, index, size)
        masks = torch.from_numpy(np.array([i.mask for i in instances], dtype=bool).reshape(-1, size, size))
        # masks_to_boxes gives the last masked pixel; pixel x covers [x, x+1), so a box ends one past it, as COCO's.
        boxes = masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])
        labels = torch.tensor([i.category_id for i in instances], dtype=torch.int64)
        images.append(image_tensor(image))
        targets.append({"boxes": boxes, "labels": labels, "masks": masks.to(torch.uint8)})
    return images, targets


def _lr_factor(step: int, steps: int) -> float:
    if step < WARMUP_STEPS:
        return 0.001 + (1 - 0.001) * step / WARMUP_STEPS
    return 0.5 * (1 + math.cos(math.pi * (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)))


def save_fp16(model: torch.nn.Module, path: Path) -> None:
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not save_file: it writes the file private, and the installed package must be readable by every user.
    write_atomically(path, save(state, metadata={"model": SHAPES_DEMO}))
    console.print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")


def write_metrics(args: argparse.Namespace, ap: CocoAP, seconds: float, load_samples: list[float]) -> None:
    metrics = {
        "val": {"seed": args.val_seed, "count": args.val_count, "size": shapes_demo.INPUT_SIZE},
        "box_ap": round(ap.box, 4),
        "mask_ap": round(ap.mask, 4),
        "training": {
            "command": shlex.join(["python", *sys.argv]),
            "seed": args.seed,
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "threads": args.threads,
            "minutes": round(seconds / 60, 1),
            "mean_load_average": round(_mean(load_samples), 2),
            "max_load_average": round(max(load_samples), 2),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "torch": torch.__version__,
        },
    }
    path = args.output.with_suffix(".json")
    write_atomically(path, (json.dumps(metrics, indent=2) + "\n").encode())
    console.print(f"{path}: written")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


if __name__ == "__main__":
    main()
