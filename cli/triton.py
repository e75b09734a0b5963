"""`maskrt triton`: a model repository for NVIDIA's Triton container (serve/triton_repository.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from maskrt.cli.arguments import flags, integer
from maskrt.cli.serve import add_model_options


def add(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    triton = verbs.add_parser("triton", parents=[common], help="write a model repository for NVIDIA's Triton container")
    triton.add_argument("model", type=Path, help="a deploy graph (.onnx) or an engine (.engine, with its .engine.json)")
    triton.add_argument("-o", "--output", type=Path, required=True, help="the repository folder to write (new or empty)")
    add_model_options(triton)
    triton.add_argument("--threads", type=integer(1), help="ONNX Runtime's threads in a Predictor model (default: one per core)")
    triton.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> None:
    from maskrt.serve.triton_repository import write_triton_repository

    chosen = flags(args, "model_name", "instances", "max_queue_delay_us", "score_threshold", "max_image_pixels", "threads")
    write_triton_repository(args.model, args.output, console, **chosen)
