"""A maskrt server in a subprocess of its own (`python -m maskrt.cli serve`), on 127.0.0.1, for the serving tests;
and comparing its answers with the Predictor's."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from maskrt.runtime.coco import mask_rle
from maskrt.runtime.predictor import Detections
from maskrt.serve.protocol import Found
from maskrt.serve.stub import process_tree

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 120.0


def free_ports(count: int) -> list[int]:
    """`count` ports nothing listens on now (the kernel's picks, released at once)."""
    sockets = []
    for _ in range(count):
        probe = socket.socket()
        probe.bind((HOST, 0))
        sockets.append(probe)
    ports = [probe.getsockname()[1] for probe in sockets]
    for probe in sockets:
        probe.close()
    return ports


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    http_port: int
    grpc_port: int
    metrics_port: int
    log: Path
    seen: set[int] = field(default_factory=set)  # every pid of its tree seen while it ran

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    def tree(self) -> list[int]:
        pids = process_tree(self.process.pid)
        self.seen.update(pids)
        return pids

    def wait_ready(self, model_name: str = "maskrt") -> None:
        import tritonclient.http as http

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        client = http.InferenceServerClient(self.http_url)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(Exception):
                if client.is_model_ready(model_name):
                    self.tree()
                    return
            time.sleep(0.5)
        raise AssertionError(f"the server was not ready in {STARTUP_TIMEOUT_S} s: {self.log.read_text()[-2000:]}")

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    def stop(self, timeout_s: float = 30.0) -> float:
        """SIGTERM to the server alone (as systemd or a container runtime sends it); seconds until it exited."""
        self.tree()
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL the server and its tree while it still runs (a failed test's cleanup); once it has exited and
        been reaped its pid is no longer its own, so nothing is signalled."""
        if self.process.poll() is not None:
            return
        for pid in reversed(self.tree()):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.process.wait(10)

    def shared_memory_left(self) -> list[str]:
        """The Python backend's shared-memory regions of this server's tritonserver left in /dev/shm (PyTriton
        names them pytrtion<server pid>-...)."""
        shm = Path("/dev/shm")
        return sorted(p.name for p in shm.glob(f"pytrtion{self.process.pid}-*")) if shm.is_dir() else []

    def survivors(self) -> list[str]:
        """The command lines of processes this server started that still exist (a zombie, whose command line is
        empty, counts: nobody reaped it)."""
        left = []
        for pid in sorted(self.seen - {self.process.pid}):
            with contextlib.suppress(OSError):
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                left.append(f"{pid}: {command[:120]}")
        return left


@contextlib.contextmanager
def running_server(model: Path, folder: Path, *flags: str) -> Iterator[ServerProcess]:
    """A server for `model` on free ports of 127.0.0.1, stopped (and anything left of it killed) afterwards."""
    http_port, grpc_port, metrics_port = free_ports(3)
    log = folder / f"server-{http_port}.log"
    command = [
        sys.executable, "-m", "maskrt.cli", "serve", str(model),
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
        "--address", HOST, "--log-file", str(folder / f"tritonserver-{http_port}.log"), *flags,
    ]  # fmt: skip
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    server = ServerProcess(process, http_port, grpc_port, metrics_port, log)
    try:
        server.wait_ready()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        server.kill()


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


def huge_png(height: int, width: int) -> bytes:
    """A valid 1-bit greyscale PNG of height x width (all black): a few tens of kB that decode to gigabytes in RGB."""
    rows = b"".join(b"\x00" + b"\x00" * ((width + 7) // 8) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def assert_same_as_predictor(found: Found, expected: Detections, what: str) -> None:
    """The server's answer for an image equals the Predictor's: same labels and class names, boxes within 1e-4,
    scores within 1e-6, the same COCO RLE for every mask (and the same full masks where they were asked for)."""
    assert found.image_size == expected.image_size, f"{what}: image size {found.image_size} != {expected.image_size}"
    assert list(found.labels) == list(expected.labels), f"{what}: labels {list(found.labels)} != {list(expected.labels)}"
    assert found.class_names == expected.class_names, what
    assert np.abs(found.boxes - expected.boxes).max(initial=0) <= 1e-4, f"{what}: boxes differ"
    assert np.abs(found.scores - expected.scores).max(initial=0) <= 1e-6, f"{what}: scores differ"
    assert found.masks_rle == [mask_rle(mask) for mask in expected.masks], f"{what}: RLE masks differ"
    if found.masks is not None:
        assert np.array_equal(found.masks, expected.masks), f"{what}: full masks differ"
