"""`maskrt infer`: a deploy graph or engine on images, videos or a camera (runtime/infer.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from maskrt.cli.arguments import add_backend_options, backend_options, fraction


def add(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    infer = verbs.add_parser("infer", parents=[common], help="run a deploy graph or engine on images, videos or a camera")
    infer.add_argument("model", type=Path, help="deploy graph (.onnx, ONNX Runtime) or engine (.engine, TensorRT)")
    infer.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders of images, globs, videos, camera indices")
    infer.add_argument("-o", "--output", type=Path, default=Path("infer"), help="output folder (default ./infer)")
    infer.add_argument("--score-threshold", type=fraction, default=0.5, help="minimum score of a detection (default 0.5)")
    infer.add_argument("--annotations", type=Path, help="COCO instances json: results.json takes its image ids by file name")
    add_backend_options(infer)
    infer.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> None:
    from maskrt.runtime.infer import infer

    infer(args.model, args.inputs, args.output, args.score_threshold, args.annotations, console, **backend_options(args))
