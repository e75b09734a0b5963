"""`maskrt demo`: the whole pipeline on shapes-demo, offline, with the commands a user would type.

The val set → export → surgery in both plugin modes → FP16 and INT8 graphs (INT8 calibrated on train images, never
on val) → an engine where TensorRT and a GPU are there → `maskrt infer` overlays of a few images → `maskrt check` of
everything against PyTorch. Each step is the `maskrt` command it prints, run in this process.
"""

from __future__ import annotations

import argparse
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from maskrt.cli import exits
from maskrt.contracts.errors import BadInput
from maskrt.contracts.files import check_output_folder

VAL_IMAGES = 100  # the first half of the val set of shapes-demo's model card (seed 1): under 10 minutes on 2 cores
VAL_SEED = 1
TRAIN_IMAGES = 64  # calibration images, from the training distribution (seed 0)
TRAIN_SEED = 0
INFER_IMAGES = 4  # images drawn by `maskrt infer`


def add(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    demo = verbs.add_parser(
        "demo",
        parents=[common],
        help="the whole pipeline on shapes-demo, offline: export, surgery, FP16 and INT8, infer, check",
    )
    demo.add_argument("-o", "--output", type=Path, default=Path("maskrt-demo"), help="where it all goes (default maskrt-demo)")
    demo.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    return run_demo(args.output, console)


def run_demo(output: Path, console: Console) -> int:
    """Runs every step into `output`; the exit code of `maskrt check` (0: every backend passed), or that of the first
    step that did not finish (130 when it was interrupted)."""
    from maskrt.cli.main import main
    from maskrt.contracts.tensorrt import installed_tensorrt

    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise BadInput(f"{output}: already exists and is not an empty folder; choose a new folder for the demo")
    check_output_folder(output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    val, train = output / "shapes-val", output / "shapes-train"
    model = output / "model.onnx"
    deploys = {mode: output / f"deploy.{mode}.onnx" for mode in ("maskrt", "native")}
    fp16, int8 = output / "deploy.fp16.onnx", output / "deploy.int8.onnx"
    steps: list[tuple[str, list[str]]] = [
        ("the val set", ["shapes", "--count", str(VAL_IMAGES), "--seed", str(VAL_SEED), "-o", str(val)]),
        ("calibration images", ["shapes", "--count", str(TRAIN_IMAGES), "--seed", str(TRAIN_SEED), "-o", str(train)]),
        ("export", ["export", "--model", "shapes-demo", "-o", str(model)]),
        *[
            (f"surgery, {mode} plugins", ["convert", str(model), "--surgery-only", "--plugins", mode, "-o", str(path)])
            for mode, path in deploys.items()
        ],
        ("FP16", ["convert", str(deploys["native"]), "--precision", "fp16", "--onnx-only", "-o", str(fp16)]),
        (
            "INT8, calibrated on the train images",
            ["convert", str(deploys["native"]), "--precision", "int8", "--onnx-only", "--calib-images", str(train)]
            + ["--calib-count", str(TRAIN_IMAGES), "-o", str(int8)],
        ),
    ]
    for what, argv in steps:
        if (code := _step(main, what, argv, console)) != exits.DONE:
            return code
    engines = []
    tensorrt = installed_tensorrt()
    if tensorrt is not None and tensorrt.builder:  # a GPU is then asked for by the build itself
        engine = output / "model.engine"
        code = _step(main, "engine", ["convert", str(fp16), "-o", str(engine)], console)
        if code in (exits.INTERRUPTED, exits.TERMINATED):
            return code
        if code == exits.DONE:  # a build that fails here leaves the rest of the demo to run
            engines.append(engine)
    else:
        console.print("engine: skipped, no TensorRT builder and GPU here (the FP16 and INT8 graphs build on one)")
    overlays = output / "infer"
    images = [str(path) for path in sorted((val / "images").iterdir())[:INFER_IMAGES]]
    if (code := _step(main, "overlays", ["infer", str(deploys["native"]), *images, "-o", str(overlays)], console)) != exits.DONE:
        return code
    report = output / "report"
    check = ["check", "--shapes-demo", "--onnx", str(model), "--images", str(val), "-o", str(report)]
    for graph in (*deploys.values(), fp16, int8):
        check += ["--deploy", str(graph)]
    for engine in engines:
        check += ["--engine", str(engine)]
    code = _step(main, "check", check, console)
    if code not in (exits.INTERRUPTED, exits.TERMINATED):
        console.print(f"demo: {time.perf_counter() - started:.0f} s; overlays in {overlays}; report: {report / 'index.html'}")
    return code


def _step(main: object, what: str, argv: Sequence[str], console: Console) -> int:
    console.print(f"\n{what}: $ maskrt {shlex.join(argv)}", style="bold")
    return int(main(list(argv)))  # type: ignore[operator]
