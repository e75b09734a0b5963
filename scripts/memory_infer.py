"""`maskrt infer` holds its memory flat over a long video: RSS after frame 200 and after frame 2000 of a synthetic
200x150 video of moving shapes, through shapes-demo's deploy graph on ONNX Runtime.

    python scripts/memory_infer.py [--frames 2000] [--plugins maskrt|native] [--threads 2]

Prints the resident set size at both frames and the growth between them (the aim: under 50 MB).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import maskrt.runtime.infer as infer_module
from maskrt.cli.main import main as maskrt

PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def write_video(path: Path, frames: int) -> None:
    """Shapes drifting over a gradient, 200x150 at 25 frames/s."""
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (200, 150))
    background = np.dstack([*np.meshgrid(np.linspace(40, 200, 200), np.linspace(60, 180, 150)), np.full((150, 200), 120.0)])
    starts, speeds = rng.uniform(20, 130, (4, 2)), rng.uniform(-1.5, 1.5, (4, 2))
    colours = rng.integers(0, 256, (4, 3))
    for index in range(frames):
        frame = background.astype(np.uint8).copy()
        for shape, (start, speed, colour) in enumerate(zip(starts, speeds, colours)):
            x, y = (np.abs((start + speed * index) % 260 - 130) + [35, 10]).astype(int)
            colour = tuple(int(c) for c in colour)
            if shape % 2:
                cv2.circle(frame, (x, y), 14, colour, -1)
            else:
                cv2.rectangle(frame, (x - 12, y - 12), (x + 12, y + 12), colour, -1)
        writer.write(frame)
    writer.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--plugins", choices=["maskrt", "native"], default="maskrt")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    checkpoints = (200, args.frames)
    resident: dict[int, float] = {}
    run = infer_module._run

    def measured(pending: list[Any], predictor: Any, outputs: Any, *rest: Any) -> None:
        run(pending, predictor, outputs, *rest)
        for checkpoint in checkpoints:
            if checkpoint not in resident and len(outputs.timings) >= checkpoint:
                resident[checkpoint] = resident_mb()

    infer_module._run = measured  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="maskrt-memory-") as scratch:
        folder = Path(scratch)
        video, exported, deploy = folder / "video.mp4", folder / "model.onnx", folder / "deploy.onnx"
        write_video(video, args.frames)
        assert maskrt(["export", "--model", "shapes-demo", "-o", str(exported)]) == 0
        assert maskrt(["convert", str(exported), "--surgery-only", "--plugins", args.plugins, "-o", str(deploy)]) == 0
        started = time.perf_counter()
        argv = ["infer", str(deploy), str(video), "-o", str(folder / "out"), "--threads", str(args.threads)]
        assert maskrt(argv) == 0
        seconds = time.perf_counter() - started
    first, last = (resident[c] for c in checkpoints)
    print(f"\nmaskrt infer, {args.frames} frames of 200x150, --plugins {args.plugins}, {seconds:.0f} s")
    print(f"  RSS after frame {checkpoints[0]}: {first:.1f} MB; after frame {checkpoints[1]}: {last:.1f} MB; growth {last - first:+.1f} MB")


if __name__ == "__main__":
    main()
