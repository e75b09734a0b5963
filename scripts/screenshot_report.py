"""Opens a `maskrt check` report (REPORT/index.html) in headless Chromium, fails on any console message the page
logs (an error, a blocked resource), and saves a screenshot of the whole page.

    python scripts/screenshot_report.py REPORT [-o REPORT/screenshot.png]

Chromium is Debian's `chromium` package (apt-get install -y chromium) or any chromium/chrome on PATH.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

WIDTH = 1280
HEIGHT = 12000  # taller than any report; the blank bottom is cut off
# Chromium writes what a page logs to its console as: [..:INFO:CONSOLE(line)] "message", source: url (line)
CONSOLE = re.compile(r":CONSOLE\(\d+\)\]|Refused to |Failed to load resource|Uncaught ")


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(page: Path, output: Path, timeout: float = 120.0) -> list[str]:
    """Renders `page` into the PNG `output`; returns the console messages the page logged (none for a clean page)."""
    browser = chromium()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="maskrt-chromium-") as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--hide-scrollbars",
            "--virtual-time-budget=10000",
            f"--window-size={WIDTH},{HEIGHT}",
            f"--screenshot={output}",
            page.resolve().as_uri(),
        ]
        finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if finished.returncode != 0 or not output.is_file():
        raise RuntimeError(f"chromium failed ({finished.returncode}): {finished.stderr.strip()[-2000:]}")
    _crop_blank_bottom(output)
    return [line for line in finished.stderr.splitlines() if CONSOLE.search(line)]


def _crop_blank_bottom(path: Path) -> None:
    image = cv2.imread(str(path))
    rows = np.flatnonzero((image < 250).any(axis=(1, 2)))
    if len(rows):
        cv2.imwrite(str(path), image[: min(len(image), rows[-1] + 40)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the folder `maskrt check -o` wrote")
    parser.add_argument("-o", "--output", type=Path, help="the PNG (default: REPORT/screenshot.png)")
    args = parser.parse_args()
    page = args.report / "index.html"
    if not page.is_file():
        print(f"{page}: not found", file=sys.stderr)
        return 2
    output = args.output or args.report / "screenshot.png"
    messages = screenshot(page, output)
    for message in messages:
        print(message, file=sys.stderr)
    print(f"{output}: {'no console messages' if not messages else f'{len(messages)} console message(s)'}")
    return 1 if messages else 0


if __name__ == "__main__":
    sys.exit(main())
