"""The INT8 conversion of shapes-demo with an empty and with a warm calibration cache, side by side in one run:
`trt-convert deploy.onnx --onnx-only --precision int8 --calib-images train` twice, the second finding the
letterboxed calibration tensors in the cache that the first wrote, so that it reads no image.

    python scripts/bench_calibration_cache.py [--count 64] [--work DIR]

Both runs start from the same deploy graph, so they differ only in where the calibration set comes from; the images
read are counted at the one place calib/ reads them. The PTQ time of ResNet-50-FPN at 800x1344 is in
scripts/bench_precision.py.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from rich.table import Table

import maskrt.calib.calibration as calibration
from maskrt.cli.main import main as maskrt
from maskrt.runtime.progress import make_console


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=64, help="train images to calibrate on (default 64)")
    parser.add_argument("--work", type=Path, help="folder for the graphs and the cache (default: a temporary one)")
    args = parser.parse_args()
    console = make_console()
    with tempfile.TemporaryDirectory(prefix="maskrt-bench-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        os.environ["XDG_CACHE_HOME"] = str(work / "cache")  # an empty calibration cache for the first run
        exported, deploy, train = work / "model.onnx", work / "deploy.onnx", work / "train"
        for argv in (
            ["export", "--model", "shapes-demo", "-o", str(exported)],
            ["convert", str(exported), "--surgery-only", "--plugins", "native", "-o", str(deploy)],
            ["shapes", "--count", str(args.count), "--seed", "0", "-o", str(train)],
        ):
            assert maskrt(argv) == 0
        measured = {"reads": 0, "seconds": 0.0}
        read_rgb, calibration_set = calibration.read_rgb, calibration.calibration_set

        def counted_read(path: Path) -> object:
            measured["reads"] += 1
            return read_rgb(path)

        def timed_set(*args: object, **kwargs: object) -> object:
            started = time.perf_counter()
            result = calibration_set(*args, **kwargs)  # type: ignore[arg-type]
            measured["seconds"] = time.perf_counter() - started
            return result

        calibration.read_rgb = counted_read  # type: ignore[assignment]
        calibration.calibration_set = timed_set  # type: ignore[assignment]
        table = Table(title=f"shapes-demo INT8 conversion, {args.count} calibration images", title_justify="left")
        table.add_column("calibration cache")
        for column in ("images read", "calibration set s", "conversion s"):
            table.add_column(column, justify="right")
        for run in ("empty", "warm"):
            measured["reads"] = 0
            output = work / f"model.int8.{run}.onnx"
            argv = ["convert", str(deploy), "--onnx-only", "--precision", "int8", "--calib-images", str(train)]
            started = time.perf_counter()
            assert maskrt([*argv, "--calib-count", str(args.count), "-o", str(output)]) == 0
            row = (str(measured["reads"]), f"{measured['seconds']:.2f}", f"{time.perf_counter() - started:.1f}")
            table.add_row(run, *row)
        console.print(table)
        console.print("the first conversion also pays for importing ModelOpt and ONNX Runtime's first session")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
