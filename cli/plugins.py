"""`maskrt plugins build`: the plugins' CUDA kernels compiled into the cached fatbin (plugins/kernel_build.py)."""

from __future__ import annotations

import argparse

from rich.console import Console


def add(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    plugins = verbs.add_parser("plugins", parents=[common], help="the custom TensorRT plugins")
    plugin_verbs = plugins.add_subparsers(dest="plugins_verb", required=True, metavar="<action>")
    build = plugin_verbs.add_parser("build", parents=[common], help="compile the CUDA kernels into the cached fatbin")
    build.add_argument("--force", action="store_true", help="rebuild even when the cached fatbin is current")
    build.set_defaults(run=run_build)


def run_build(args: argparse.Namespace, console: Console) -> None:
    from maskrt.plugins.kernel_build import build_fatbin

    path = build_fatbin(force=args.force, console=console)
    console.print(f"kernels: {path}")
