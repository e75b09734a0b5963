"""What OpenCV, FFmpeg and the image decoders print on their own: kept off maskrt's console, and where it says why a
file cannot be read, folded into maskrt's one-line refusal.

OpenCV logs through its own logger, silenced here; FFmpeg at the level OpenCV gives it when it first opens a video
(OPENCV_FFMPEG_LOGLEVEL), quiet here; either is left as the user set it in the environment, for debugging. The image
decoders (libpng, libjpeg) write to the process's stderr, which decoder_messages captures around one call.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

import cv2

FFMPEG_QUIET = "-8"  # AV_LOG_QUIET
REASON_CHARS = 120  # of a library's message, in a refusal


def quiet_opencv() -> None:
    """Silences OpenCV's log and, if no video was opened yet in this process, FFmpeg's."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", FFMPEG_QUIET)
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


@contextlib.contextmanager
def decoder_messages() -> Iterator[list[str]]:
    """The lines native code writes to the process's stderr while the block runs, in the list yielded, filled when
    the block ends. Only in the main thread: elsewhere the console may be printing from the main thread meanwhile,
    and nothing is captured."""
    lines: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield lines
        return
    sys.stderr.flush()  # what Python wrote before the block is not the decoder's
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                capture.seek(0)
                lines += [line.strip() for line in capture.read().decode(errors="replace").splitlines() if line.strip()]
    finally:
        os.close(saved)


def reason(lines: list[str]) -> str:
    """' (the first line a library printed)' for a refusal; nothing when it printed none."""
    return f" ({lines[0][:REASON_CHARS]})" if lines else ""
