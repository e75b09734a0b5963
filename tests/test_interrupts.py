"""Ctrl-C (SIGINT) and SIGTERM sent to a running `maskrt`, as a user or a job scheduler sends them: the exit code of
the table (130, 143), the work that was complete kept and said, and no file left behind anywhere, the system's temp
folder (TMPDIR, fresh for each run) included.

Each run is a real process signalled once it is well into its work: `maskrt infer` when its video has frames written,
INT8 `--onnx-only` while ModelOpt calibrates (where the interrupt once aborted the process from inside ONNX Runtime's
Python custom ops), `maskrt check` while it compares.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest

from maskrt.calib.shapes import write_dataset
from maskrt.cli import exits

from runtime_support import shapes_frame, write_video

SIGNALS = {"SIGINT": (signal.SIGINT, exits.INTERRUPTED, "interrupted"), "SIGTERM": (signal.SIGTERM, exits.TERMINATED, "terminated")}
# What importing the libraries writes into TMPDIR whatever maskrt does, and keeps for the next run: ONNX Runtime's
# session id file and PyTorch's (empty) compile cache folder.
LIBRARY_FILES = {".ses", f"torchinductor_{getpass.getuser()}"}
VIDEO_FRAMES = 200


def run_and_signal(argv: list[str], signum: int, ready: Callable[[str], bool], run: Path, timeout: float = 300) -> tuple[int, str]:
    """Runs `maskrt argv` with a fresh TMPDIR (run/tmp) and cache (run/cache), sends `signum` once
    `ready(stderr so far)` holds, and returns its exit code and stderr."""
    (run / "tmp").mkdir(parents=True)
    environment = {**os.environ, "TMPDIR": str(run / "tmp"), "XDG_CACHE_HOME": str(run / "cache")}
    log = run / "stderr.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "maskrt.cli", *argv], stderr=stderr, env=environment)
        try:
            deadline = time.monotonic() + timeout
            while not ready(log.read_text()):
                assert process.poll() is None, f"maskrt ended before the signal:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"not ready in {timeout} s:\n{log.read_text()}"
                time.sleep(0.05)
            process.send_signal(signum)
            code = process.wait(timeout=120)
        finally:
            process.kill()
            process.wait()
    return code, log.read_text()


def assert_stopped_cleanly(code: int, stderr: str, name: str, run: Path, verb: str) -> None:
    """The signal's exit code, maskrt's last line saying so, no traceback or abort, TMPDIR as the libraries leave it."""
    _, expected_code, said = SIGNALS[name]
    assert code == expected_code, stderr
    assert stderr.strip().splitlines()[-1] == f"maskrt {verb}: {said}", stderr
    assert "Traceback" not in stderr and "terminate called" not in stderr, stderr
    left = sorted(p.name for p in (run / "tmp").iterdir() if p.name not in LIBRARY_FILES)
    assert not left, f"left in the temp folder: {left}"


@pytest.mark.parametrize("name", SIGNALS)
def test_infer_on_a_video_keeps_the_frames_done(shapes_demo_graph: Callable[..., Path], tmp_path: Path, name: str) -> None:
    video, out = tmp_path / "clip.mp4", tmp_path / "out"
    write_video(video, [shapes_frame(i, seed=3) for i in range(VIDEO_FRAMES)], 12.0)
    argv = ["infer", str(shapes_demo_graph(1, "native")), str(video), "-o", str(out)]

    def frames_written(stderr: str) -> bool:  # the partial video appears with the first frame written
        return out.is_dir() and any(p.name.startswith(".clip.tmp") for p in out.iterdir())

    code, stderr = run_and_signal(argv, SIGNALS[name][0], frames_written, tmp_path / "run")
    assert_stopped_cleanly(code, stderr, name, tmp_path / "run", "infer")
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4", "results.json", "timing.json"]
    frames = json.loads((out / "timing.json").read_text())["frames"]
    assert 0 < frames < VIDEO_FRAMES and f"infer: stopped after {frames} frames at " in stderr
    assert {r["image_id"] for r in json.loads((out / "results.json").read_text())} <= set(range(frames))
    written = cv2.VideoCapture(str(out / "clip.mp4"))  # finished: its index written, every frame done in it
    assert written.isOpened() and int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
    written.release()


@pytest.mark.parametrize("name", SIGNALS)
def test_int8_onnx_only_during_calibration_leaves_nothing(
    shapes_demo_deploy: Callable[[str], Path], tmp_path: Path, name: str
) -> None:
    """On a graph with maskrt's plugins, whose calibration runs them as ONNX Runtime custom ops in Python."""
    write_dataset(tmp_path / "train", count=16, seed=0, size=64)
    output = tmp_path / "model.int8.onnx"
    argv = ["convert", str(shapes_demo_deploy("maskrt")), "--precision", "int8", "--onnx-only"]
    argv += ["--calib-images", str(tmp_path / "train"), "--calib-count", "16", "-o", str(output)]

    def calibrating(stderr: str) -> bool:  # ONNX Runtime's quantizer has made its model for collecting the ranges
        return any((tmp_path / "run" / "tmp").glob("maskrt-int8-*/**/augmented_model.onnx"))

    code, stderr = run_and_signal(argv, SIGNALS[name][0], calibrating, tmp_path / "run")
    assert_stopped_cleanly(code, stderr, name, tmp_path / "run", "convert")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "train"], "no output, no temporary file beside it"
    # The calibration set was complete before calibration began: it is kept, in the cache, for the next run.
    [cached] = (tmp_path / "run" / "cache" / "maskrt" / "calib").iterdir()
    assert cached.suffix == ".npz" and "from the cache" not in stderr


@pytest.mark.parametrize("name", SIGNALS)
def test_check_leaves_no_half_report(shapes_demo_deploy: Callable[[str], Path], tmp_path: Path, name: str) -> None:
    write_dataset(tmp_path / "val", count=8, seed=1, size=64)
    report = tmp_path / "report"
    argv = ["check", "--shapes-demo", "--deploy", str(shapes_demo_deploy("maskrt")), "--images", str(tmp_path / "val")]
    comparing = lambda text: "checking 1 backend" in text  # noqa: E731
    code, stderr = run_and_signal([*argv, "-o", str(report)], SIGNALS[name][0], comparing, tmp_path / "run")
    assert_stopped_cleanly(code, stderr, name, tmp_path / "run", "check")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "val"], "no report, no staging folder"
