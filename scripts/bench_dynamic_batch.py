"""A dynamic-batch deploy graph against static ones on ONNX Runtime (CPU), side by side in one run.

shapes-demo, exported at batch 1, converted three ways: static at batch 1, static at batch 4 (what one engine for a
4-camera setup was before), and dynamic up to 4 (`--max-batch 4`). Each runs on the runtime's own backend
(OnnxRuntimeBackend, as the Predictor and `maskrt bench` run it), the graph alone:

1. per-image latency at batch 1: the dynamic graph against the static batch-1 graph (it must be within 5%), and the
   static batch-4 graph given one image padded to 4, as the Predictor pads it;
2. images per second of the dynamic graph at batch 1, 2 and 4, and of the static batch-4 graph at 4.

    python scripts/bench_dynamic_batch.py [--plugins native] [--threads 1] [--rounds 7] [--runs 20]

The contenders run in turn within each round (a shared machine slows all of them alike); each figure is the median
over the rounds, and the batch-1 ratio is the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime

from maskrt.calib.shapes import render_sample
from maskrt.cli.main import main as maskrt
from maskrt.runtime.backends import OnnxRuntimeBackend
from maskrt.runtime.predictor import batch_feeds
from maskrt.runtime.preprocess import letterbox

MAX_BATCH = 4
TOLERANCE = 0.05


def graphs(folder: Path, plugins: str) -> dict[str, Path]:
    exported = folder / "shapes-demo.onnx"
    assert maskrt(["export", "--model", "shapes-demo", "-o", str(exported)]) == 0
    made = {}
    for name, flags in (("static batch 1", []), ("dynamic 1..4", ["--max-batch", str(MAX_BATCH)])):
        made[name] = folder / f"deploy.{len(made)}.onnx"
        assert maskrt(["convert", str(exported), "--surgery-only", "--plugins", plugins, *flags, "-o", str(made[name])]) == 0
    batch4 = folder / "shapes-demo.b4.onnx"
    assert maskrt(["export", "--model", "shapes-demo", "--batch", str(MAX_BATCH), "-o", str(batch4)]) == 0
    made["static batch 4"] = folder / "deploy.b4.onnx"
    assert maskrt(["convert", str(batch4), "--surgery-only", "--plugins", plugins, "-o", str(made["static batch 4"])]) == 0
    return made


def per_run(backend: OnnxRuntimeBackend, images: list[np.ndarray], count: int) -> Callable[[], object]:
    """One run of `count` images, fed as the Predictor feeds the backend (a static graph's batch padded)."""
    prepared = [letterbox(image, backend.info.input_size, backend.info.image_mean) for image in images[:count]]
    feeds = batch_feeds(prepared, backend.info)
    return lambda: backend.run(feeds)


def measure(contenders: dict[str, Callable[[], object]], rounds: int, runs: int) -> dict[str, list[float]]:
    """Seconds per run of each contender, one figure per round (the mean of `runs` runs)."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for contender in contenders.values():
        contender()  # the first run plans and allocates
    for _ in range(rounds):
        for name, contender in contenders.items():
            started = time.perf_counter()
            for _ in range(runs):
                contender()
            samples[name].append((time.perf_counter() - started) / runs)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugins", choices=["native", "maskrt"], default="native")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime's intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=20, help="runs per contender and round (default 20)")
    args = parser.parse_args()
    images = [render_sample(1, i, 128)[0] for i in range(MAX_BATCH)]
    with tempfile.TemporaryDirectory(prefix="maskrt-bench-") as folder:
        made = graphs(Path(folder), args.plugins)
        backends = {name: OnnxRuntimeBackend(path, device="cpu", threads=args.threads) for name, path in made.items()}
        contenders = {
            "static batch 1, 1 image": per_run(backends["static batch 1"], images, 1),
            "dynamic 1..4, 1 image": per_run(backends["dynamic 1..4"], images, 1),
            "static batch 4, 1 image padded to 4": per_run(backends["static batch 4"], images, 1),
            "dynamic 1..4, 2 images": per_run(backends["dynamic 1..4"], images, 2),
            "dynamic 1..4, 4 images": per_run(backends["dynamic 1..4"], images, 4),
            "static batch 4, 4 images": per_run(backends["static batch 4"], images, 4),
        }
        samples = measure(contenders, args.rounds, args.runs)
    counts = {name: int(name.split(", ")[1].split()[0]) for name in contenders}
    print(
        f"\nshapes-demo (128x128), --plugins {args.plugins}, ONNX Runtime {onnxruntime.__version__} CPU, "
        f"{args.threads} thread(s), {args.rounds} rounds of {args.runs} runs; the graph alone (OnnxRuntimeBackend.run)"
    )
    print(f"  {'':40s} {'ms per run':>10s} {'ms per image':>13s} {'images/s':>9s}")
    for name, values in samples.items():
        seconds = statistics.median(values)
        print(f"  {name:40s} {seconds * 1e3:10.2f} {seconds * 1e3 / counts[name]:13.2f} {counts[name] / seconds:9.1f}")
    ratios = [d / s for d, s in zip(samples["dynamic 1..4, 1 image"], samples["static batch 1, 1 image"])]
    ratio = statistics.median(ratios)
    verdict = "within" if abs(ratio - 1) <= TOLERANCE else "NOT within"
    print(
        f"\nbatch 1: the dynamic graph takes {ratio:.3f}x the static batch-1 graph's time per image (median of the "
        f"rounds' ratios, {min(ratios):.3f} to {max(ratios):.3f}): {verdict} {TOLERANCE:.0%}"
    )


if __name__ == "__main__":
    main()
