"""`maskrt deepstream`: nvinfer and deepstream-app configs for a deploy graph in DeepStream's layout
(serve/deepstream.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from maskrt.cli.arguments import fraction
from maskrt.serve import defaults


def add(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    deepstream = verbs.add_parser("deepstream", parents=[common], help="write DeepStream's nvinfer and deepstream-app configs")
    deepstream.add_argument("model", type=Path, help="a --plugins native deploy graph in DeepStream's layout (--layout deepstream)")
    deepstream.add_argument("-o", "--output", type=Path, required=True, help="the folder to write the configs into (new or empty)")
    deepstream.add_argument("--engine", type=Path, help="the engine nvinfer loads (default: nvinfer builds one from the graph)")
    deepstream.add_argument("--source", default=defaults.DEEPSTREAM_SOURCE, help="deepstream-app's source URI (default: DeepStream's sample video)")
    deepstream.add_argument("--sink", choices=defaults.DEEPSTREAM_SINKS, default="file", help="file (OUTPUT/out.mp4, default), screen or fake")
    deepstream.add_argument("--score-threshold", type=fraction, default=0.5, help="nvinfer's pre-cluster-threshold (default 0.5)")
    deepstream.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> None:
    from maskrt.serve.deepstream import write_deepstream

    write_deepstream(args.model, args.output, args.engine, args.source, args.sink, args.score_threshold, console)
