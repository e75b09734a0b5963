"""`maskrt bench`: latency and throughput of a deploy graph or engine, stage by stage (runtime/bench.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from maskrt.cli.arguments import add_backend_options, backend_options, integer


def add(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    bench = verbs.add_parser("bench", parents=[common], help="latency and throughput of a deploy graph or engine, per stage")
    bench.add_argument("model", type=Path, help="deploy graph (.onnx, ONNX Runtime) or engine (.engine, TensorRT)")
    bench.add_argument(
        "--batch",
        type=integer(1),
        nargs="+",
        metavar="K",
        help="images per run, one or several measured in turn (default and maximum: the model's batch); a dynamic-batch "
        "model runs K images as they are, a static one pads them to its batch",
    )
    bench.add_argument("--iterations", type=integer(1), default=50, help="timed runs (default 50)")
    bench.add_argument("--warmup", type=integer(0), default=5, help="untimed runs first (default 5)")
    bench.add_argument("--cuda-graph", action="store_true", help="TensorRT: replay the enqueue as a captured CUDA graph")
    bench.add_argument("--json", action="store_true", help="print the numbers as JSON on stdout")
    bench.add_argument("--image", type=Path, help="the image to run (default: a synthetic one at the model's input size)")
    add_backend_options(bench)
    bench.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> None:
    from maskrt.runtime.bench import bench_batches

    batches = args.batch or []
    bench_batches(args.model, batches, args.iterations, args.warmup, args.json, console, args.image, **backend_options(args))
