"""`maskrt lint`: what would stop TensorRT building a graph, and where (convert/lint.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from maskrt.contracts.precisions import TENSORRT_TARGETS


def add(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    lint = verbs.add_parser("lint", parents=[common], help="check that a deploy graph is TensorRT-ready")
    lint.add_argument("model", type=Path)
    lint.add_argument(
        "--target",
        choices=list(TENSORRT_TARGETS),
        help="the TensorRT to check against (default: the oldest the graph's plugin mode allows: trt8.5 for "
        "--plugins native, trt10 for maskrt plugins)",
    )
    lint.add_argument("--all", action="store_true", help="list every problem, not the first few of each kind")
    lint.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> None:
    from maskrt.convert.lint import lint_file

    lint_file(args.model, target=args.target, show_all=args.all, console=console)
