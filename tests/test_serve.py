"""`maskrt serve` (serve/server.py): the real tritonserver of nvidia-pytriton with the Predictor bound, started as
its own process on 127.0.0.1 with shapes-demo on ONNX Runtime, asked over HTTP and gRPC with tritonclient.

Every answer equals the Predictor's for that image; bad requests get an error naming what is wrong while good ones
go on being answered; 16 clients x 50 requests are all answered right with the server's memory flat and Triton's
batcher grouping requests; SIGTERM under load stops everything within 10 s; a port in use is refused in one line."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from maskrt.cli.main import main as maskrt
from maskrt.runtime.predictor import Detections, Predictor
from maskrt.serve import protocol

from runtime_support import shapes_frame
from serve_support import HOST, ServerProcess, assert_same_as_predictor, free_ports, huge_png, png_bytes, running_server

http = pytest.importorskip("tritonclient.http")
grpc = pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pytriton")

# 20 detection rows instead of 100: the static mask head runs on every row, and these tests send ~900 images.
FLAGS = ("--detections-per-img", "20")


@pytest.fixture(scope="module")
def graph(shapes_demo_graph: Callable[..., Path]) -> Path:
    """shapes-demo at batch 4 (so that Triton's batcher can group requests), native plugins."""
    return shapes_demo_graph(4, "native", *FLAGS)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """8 shapes val images (128x128) and 4 frames that the model letterboxes (150x200 and 200x150), RGB."""
    folder = tmp_path_factory.mktemp("serve-images")
    assert maskrt(["shapes", "--count", "8", "--seed", "1", "-o", str(folder)]) == 0
    import cv2

    val = [cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) for path in sorted((folder / "images").glob("*.png"))]
    return val + [shapes_frame(i, size=size) for i, size in enumerate([(150, 200), (200, 150)] * 2)]


@pytest.fixture(scope="module")
def expected(graph: Path, images: list[np.ndarray]) -> list[Detections]:
    found = Predictor(graph, threads=1)(images)
    assert isinstance(found, list) and sum(len(f) for f in found) >= len(images)
    return found


@pytest.fixture(scope="module")
def server(graph: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(graph, tmp_path_factory.mktemp("server"), "--threads", "1") as running:
        yield running


def test_http_and_grpc_answers_equal_the_predictor(server: ServerProcess, images: list[np.ndarray], expected: list[Detections]) -> None:
    encoded = [png_bytes(image) for image in images]
    for module, url in ((http, server.http_url), (grpc, server.grpc_url)):
        client = module.InferenceServerClient(url)
        name = module.__name__
        # one image a request, encoded
        for index, data in enumerate(encoded):
            result = client.infer("maskrt", protocol.client_inputs(module, [data]), outputs=protocol.client_outputs(module))
            [found] = protocol.found_from_result(result)
            assert found.masks is None
            assert_same_as_predictor(found, expected[index], f"{name} image {index}")
        # several encoded images in one request (up to the model's batch)
        result = client.infer("maskrt", protocol.client_inputs(module, encoded[:4]), outputs=protocol.client_outputs(module))
        for index, found in enumerate(protocol.found_from_result(result)):
            assert_same_as_predictor(found, expected[index], f"{name} batched image {index}")
        # raw RGB arrays, with the full masks
        for index in (0, 8, 9):
            pixels = images[index][None]
            result = client.infer("maskrt", protocol.client_inputs(module, pixels), outputs=protocol.client_outputs(module, full_masks=True))
            [found] = protocol.found_from_result(result)
            assert found.masks is not None and found.masks.shape == (len(expected[index]), *images[index].shape[:2])
            assert_same_as_predictor(found, expected[index], f"{name} pixels {index}")


def test_bad_requests_get_an_error_naming_what_is_wrong(server: ServerProcess, images: list[np.ndarray], expected: list[Detections]) -> None:
    good = png_bytes(images[0])
    for module, url in ((http, server.http_url), (grpc, server.grpc_url)):
        client = module.InferenceServerClient(url)

        def tensor(name: str, values: np.ndarray, dtype: str) -> list[object]:
            given = module.InferInput(name, list(values.shape), dtype)
            given.set_data_from_numpy(values)
            return [given]

        cases: list[tuple[str, str, list[object], str]] = [
            ("maskrt", "bytes that are not an image", protocol.client_inputs(module, [b"GIF89a? no, plain text"]), "not an image"),
            ("maskrt", "a float array", tensor("pixels", np.zeros((1, 16, 16, 3), np.float32), "FP32"), "expects 'UINT8'"),
            ("maskrt", "a wrong rank", tensor("pixels", np.zeros((1, 16, 3), np.uint8), "UINT8"), "unexpected shape for input 'pixels'"),
            ("maskrt", "an empty batch", tensor("image", np.zeros((0, 1), object), "BYTES"), "input 'image'"),
            ("maskrt", "a 20000x20000 image", protocol.client_inputs(module, [huge_png(20000, 20000)]), "20000x20000"),
            ("maskrt", "no images", [], "0 inputs"),
            ("no-such-model", "a model that does not exist", protocol.client_inputs(module, [good]), "unknown model: 'no-such-model'"),
        ]
        for model_name, what, inputs, says in cases:
            with pytest.raises(Exception) as refused:
                client.infer(model_name, inputs, outputs=protocol.client_outputs(module))
            assert says in str(refused.value), f"{module.__name__}, {what}: {refused.value}"
            result = client.infer("maskrt", protocol.client_inputs(module, [good]), outputs=protocol.client_outputs(module))
            assert_same_as_predictor(protocol.found_from_result(result)[0], expected[0], f"{module.__name__} after {what}")
    assert server.process.poll() is None


def test_a_port_in_use_is_refused_in_one_line(graph: Path) -> None:
    http_port, grpc_port, metrics_port = free_ports(3)
    import socket

    with socket.socket() as taken:
        taken.bind((HOST, grpc_port))
        taken.listen()
        command = [sys.executable, "-m", "maskrt.cli", "serve", str(graph), "--address", HOST, "--http-port", str(http_port),
                   "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--grpc-port {grpc_port}" in lines[0] and "already in use" in lines[0], done.stderr


def _metric(text: str, name: str) -> float:
    values = [float(v) for v in re.findall(rf'^{name}{{[^}}]*model="maskrt"[^}}]*}} ([0-9.e+]+)$', text, re.M)]
    assert values, f"no {name} for maskrt in the metrics"
    return sum(values)


def test_16_clients_50_requests_each_all_right_memory_flat_batches_grouped(
    server: ServerProcess, images: list[np.ndarray], expected: list[Detections]
) -> None:
    clients, requests_each = 16, 50
    encoded = [png_bytes(image) for image in images]
    before = server.metrics()
    done = 0
    lock = threading.Lock()
    rss_at_200: list[int] = []
    failures: list[str] = []

    def client_loop(number: int) -> None:
        nonlocal done
        module, url = (http, server.http_url) if number % 2 else (grpc, server.grpc_url)
        client = module.InferenceServerClient(url)
        for request in range(requests_each):
            index = (number + request) % len(images)
            try:
                result = client.infer("maskrt", protocol.client_inputs(module, [encoded[index]]), outputs=protocol.client_outputs(module))
                assert_same_as_predictor(protocol.found_from_result(result)[0], expected[index], f"client {number} request {request}")
            except Exception as error:  # noqa: BLE001 - every failure is reported below
                with lock:
                    failures.append(f"client {number} request {request}: {error}")
            with lock:
                done += 1
                if done == 200:
                    rss_at_200.append(_tree_rss(server))

    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    elapsed = time.monotonic() - started
    rss_at_end = _tree_rss(server)
    assert not failures, f"{len(failures)} of {clients * requests_each} failed, first: {failures[:3]}"
    assert done == clients * requests_each
    growth = (rss_at_end - rss_at_200[0]) / 2**20
    assert growth < 50, f"server memory grew {growth:.1f} MB from request 200 to {done}"
    after = server.metrics()
    inferences = _metric(after, "nv_inference_count") - _metric(before, "nv_inference_count")
    executions = _metric(after, "nv_inference_exec_count") - _metric(before, "nv_inference_exec_count")
    assert inferences == clients * requests_each
    assert inferences / executions > 1.0, f"no batch larger than 1: {inferences} inferences in {executions} executions"
    print(f"{done} requests in {elapsed:.1f} s, mean batch {inferences / executions:.2f}, RSS growth {growth:.1f} MB")


def _tree_rss(server: ServerProcess) -> int:
    from maskrt.serve.stub import rss_bytes

    return rss_bytes(server.tree())


def test_sigterm_during_load_stops_everything_within_10_s(graph: Path, images: list[np.ndarray], expected: list[Detections], tmp_path: Path) -> None:
    encoded = [png_bytes(image) for image in images[:4]]
    outcomes: list[str] = []
    lock = threading.Lock()
    with running_server(graph, tmp_path, "--threads", "1") as server:
        stop_sending = threading.Event()

        def client_loop(number: int) -> None:
            module, url = (http, server.http_url) if number % 2 else (grpc, server.grpc_url)
            client = module.InferenceServerClient(url, **({"network_timeout": 20.0} if module is http else {}))
            for request in range(40):  # bounded: the server is stopped long before
                if stop_sending.is_set():
                    return
                index = (number + request) % len(encoded)
                try:
                    result = client.infer("maskrt", protocol.client_inputs(module, [encoded[index]]), outputs=protocol.client_outputs(module), **({"client_timeout": 20.0} if module is grpc else {}))
                    assert_same_as_predictor(protocol.found_from_result(result)[0], expected[index], "during load")
                    outcome = "answered"
                except AssertionError as error:
                    outcome = f"wrong: {error}"
                except Exception:  # noqa: BLE001 - an error response or a closed connection: the request ended
                    outcome = "errored"
                    stop_sending.set()
                with lock:
                    outcomes.append(outcome)

        threads = [threading.Thread(target=client_loop, args=(number,)) for number in range(8)]
        for thread in threads:
            thread.start()
        while len(outcomes) < 16:
            time.sleep(0.05)
        server.tree()
        stopped_in = server.stop()
        stop_sending.set()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads), "a request never ended"
        assert stopped_in < 10, f"the server took {stopped_in:.1f} s to stop"
        assert server.process.returncode == 0, server.log.read_text()[-2000:]
        time.sleep(0.5)
        assert not server.survivors(), f"left running: {server.survivors()}"
        assert not server.shared_memory_left(), f"shared memory left: {server.shared_memory_left()}"
        print(f"stopped in {stopped_in:.1f} s under load; {outcomes.count('answered')} answered, {outcomes.count('errored')} errored")
    assert not [o for o in outcomes if o.startswith("wrong")], outcomes
    assert outcomes.count("answered") >= 16
