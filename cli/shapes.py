"""`maskrt shapes`: the synthetic COCO-format shapes dataset (calib/shapes.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from maskrt.cli.arguments import integer


def add(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    shapes = verbs.add_parser("shapes", parents=[common], help="write the synthetic COCO-format shapes dataset")
    shapes.add_argument("--count", type=integer(1), default=200, help="images to write (default 200)")
    shapes.add_argument("--seed", type=integer(0), default=0)
    shapes.add_argument("--size", type=_image_side, default=128, help="image side in pixels (default 128)")
    shapes.add_argument("-o", "--output", type=Path, required=True, help="dataset folder (images/ and instances.json)")
    shapes.set_defaults(run=run)


def _image_side(text: str) -> int:
    from maskrt.calib.shapes import MIN_SIZE

    return integer(MIN_SIZE)(text)


def run(args: argparse.Namespace, console: Console) -> None:
    from maskrt.calib.shapes import write_dataset

    write_dataset(args.output, count=args.count, seed=args.seed, size=args.size, console=console)
