"""`maskrt bench`: latency percentiles and throughput of a deploy graph or engine, stage by stage, at one batch or at
several side by side (a dynamic-batch model runs each as it is).

Stages: preprocess (letterbox), host_to_device, compute, device_to_host (what the backend reports: TensorRT all
three from CUDA events, ONNX Runtime its whole run as compute), postprocess (boxes to original pixels, mask pasting).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from maskrt.contracts.errors import BadInput
from maskrt.runtime.predictor import Predictor
from maskrt.runtime.preprocess import read_rgb
from maskrt.runtime.progress import track

STAGES = ("preprocess", "host_to_device", "compute", "device_to_host", "postprocess")


def bench_batches(
    model: Path,
    batches: Sequence[int] = (),
    iterations: int = 50,
    warmup: int = 5,
    as_json: bool = False,
    console: Console | None = None,
    image: Path | None = None,
    **backend_options: Any,
) -> list[dict[str, Any]]:
    """Runs `iterations` timed batches after `warmup` untimed ones at each of `batches` (default: the model's batch)
    in turn, one model loaded once: per stage p50/p90/p99 in ms per batch, and images per second. A dynamic-batch
    model runs each batch as it is, a static one pads it to its own. Prints a table per batch and one of them side
    by side (or JSON on stdout: the report, or a list of them for several batches); returns the reports."""
    if iterations < 1 or warmup < 0:
        raise BadInput(f"--iterations must be at least 1 and --warmup at least 0, got {iterations} and {warmup}")
    predictor = Predictor(model, score_threshold=0.0, console=console, **backend_options)
    info = predictor.info
    batches = list(batches) or [info.batch]
    for batch in batches:
        if not 1 <= batch <= info.batch:
            raise BadInput(f"{model}: --batch must be between 1 and the model's batch {info.batch}, got {batch}")
    pixels = read_rgb(image) if image is not None else synthetic_image(info.input_size)
    reports = []
    for batch in batches:
        if console is not None:
            runs = f"batch {batch} of 1 to {info.batch}" if info.dynamic_batch else f"batch {batch} of {info.batch}"
            console.print(f"bench: {model} ({info.plugins} plugins, {info.precision}), {runs}, {iterations} iterations")
        reports.append(_measure(predictor, pixels, batch, iterations, warmup, console, model))
        if console is not None and not as_json:
            console.print(_table(reports[-1]))
    if as_json:
        sys.stdout.write(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2) + "\n")
    elif console is not None and len(reports) > 1:
        console.print(_batches_table(reports))
    return reports


def _measure(
    predictor: Predictor, pixels: np.ndarray, batch: int, iterations: int, warmup: int, console: Console | None, model: Path
) -> dict[str, Any]:
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    totals: list[float] = []
    for iteration in track(range(warmup + iterations), "bench", console, unit="batches"):
        times = _one_batch(predictor, pixels, batch)
        if iteration >= warmup:
            for stage in STAGES:
                if stage in times:
                    samples[stage].append(times[stage])
            totals.append(sum(times.values()))
    info = predictor.info
    return {
        "model": str(model),
        "backend": type(predictor.backend).__name__,
        "precision": info.precision,
        "plugins": info.plugins,
        "batch": batch,
        "dynamic_batch": info.dynamic_batch,
        "iterations": iterations,
        "stages_ms": {stage: percentiles(values) for stage, values in samples.items() if values},
        "total_ms": percentiles(totals),
        "images_per_second": round(batch * 1e3 / float(np.median(totals)), 2),
    }


def synthetic_image(size: tuple[int, int]) -> np.ndarray:
    """A smooth colour field with noise, RGB uint8 at the model's input size (seeded, so runs compare)."""
    rng = np.random.default_rng(0)
    height, width = size
    coarse = rng.uniform(0, 255, (height // 16 + 1, width // 16 + 1, 3))
    smooth = np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1)[:height, :width]
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


def _one_batch(predictor: Predictor, pixels: np.ndarray, batch: int) -> dict[str, float]:
    started = time.perf_counter()
    prepared = [predictor.prepare(pixels) for _ in range(batch)]
    letterboxed = (time.perf_counter() - started) * 1e3
    predictor.run_prepared(prepared)
    times = dict(predictor.last_timings_ms)
    times["preprocess"] += letterboxed
    return times


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p90 and p99 of `values`, rounded to 3 decimals (ms in bench and timing.json)."""
    return {name: round(float(np.percentile(values, q)), 3) for name, q in (("p50", 50), ("p90", 90), ("p99", 99))}


def _table(report: dict[str, Any]) -> Table:
    table = Table(title=f"{report['model']}: {report['backend']}, {report['precision']}, batch {report['batch']}", title_justify="left")
    for column in ("stage", "p50 ms", "p90 ms", "p99 ms", "images/s at p50"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    rows = [*report["stages_ms"].items(), ("total", report["total_ms"])]
    for stage, values in rows:
        rate = report["batch"] * 1e3 / values["p50"] if values["p50"] > 0 else float("inf")
        table.add_row(stage, f"{values['p50']:.2f}", f"{values['p90']:.2f}", f"{values['p99']:.2f}", f"{rate:.1f}")
    return table


def _batches_table(reports: list[dict[str, Any]]) -> Table:
    """The batches side by side: p50 per batch and per image, and images per second."""
    table = Table(title=f"{reports[0]['model']}: batches side by side", title_justify="left")
    for column in ("batch", "p50 ms per batch", "p50 ms per image", "images/s"):
        table.add_column(column, justify="right")
    for report in reports:
        p50 = report["total_ms"]["p50"]
        table.add_row(str(report["batch"]), f"{p50:.2f}", f"{p50 / report['batch']:.2f}", f"{report['images_per_second']:.1f}")
    return table
