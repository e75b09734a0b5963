"""`serve(model, ...)`: a Triton Inference Server (PyTriton) with the Predictor bound, for any deploy graph or engine
the Predictor runs, until SIGINT or SIGTERM.

    python -m maskrt.serve.server deploy.onnx --http-port 8000 --grpc-port 8001 --metrics-port 8002

Requests and responses are serve.protocol's: encoded images (BYTES) or RGB uint8 arrays in; boxes, scores, labels,
class names, COCO RLE masks (and full masks when asked for) out, over HTTP and gRPC (KServe v2, tritonclient).
Triton's dynamic batcher groups requests up to the model's batch (max_batch_size = the model's batch, preferred
batch = the model's batch, `max_queue_delay_us`); `instances` model instances each hold a Predictor of their own.
Prometheus metrics are on the metrics port (/metrics). SIGINT or SIGTERM stops tritonserver (in-flight requests get
`shutdown_timeout_s` to finish), its Python backend stubs and the proxy, and then anything of theirs still running.

PyTriton runs tritonserver as a child process and each model instance's Python backend stub as its child; the bound
function runs here, in this process, fed over shared memory (serve.stub says what the stubs need to run).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from rich.console import Console

from maskrt.contracts.errors import BadInput
from maskrt.runtime.predictor import Predictor
from maskrt.runtime.progress import make_console
from maskrt.serve import defaults, protocol
from maskrt.serve.stub import process_tree, stub_environment

DEFAULT_MODEL_NAME = defaults.MODEL_NAME
DEFAULT_MAX_QUEUE_DELAY_US = defaults.MAX_QUEUE_DELAY_US
DEFAULT_SHUTDOWN_TIMEOUT_S = defaults.SHUTDOWN_TIMEOUT_S
TRITONSERVER_EXIT_TIMEOUT_S = 1
INSTALL_HINT = "pip install 'maskrt[serve]' && pip install --no-deps nvidia-pytriton==0.7.0 tritonclient==2.73.0"


@dataclass(frozen=True)
class ServeSettings:
    """Everything `serve` is asked for, checked."""

    model: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    instances: int = 1
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    address: str = "127.0.0.1"
    model_name: str = DEFAULT_MODEL_NAME
    score_threshold: float = 0.5
    device: str = "auto"
    threads: int | None = None
    max_image_pixels: int = protocol.MAX_IMAGE_PIXELS
    shutdown_timeout_s: int = DEFAULT_SHUTDOWN_TIMEOUT_S
    log_file: Path | None = None  # tritonserver's log (default: in the server's temporary workspace)

    def check(self) -> None:
        """ValueError naming the setting (as its command-line flag) and what is wrong."""
        ports = {"--http-port": self.http_port, "--grpc-port": self.grpc_port, "--metrics-port": self.metrics_port}
        for flag, port in ports.items():
            if not 1 <= port <= 65535:
                raise BadInput(f"{flag} {port}: a port is 1 to 65535")
        if len(set(ports.values())) != len(ports):
            raise BadInput(f"--http-port, --grpc-port and --metrics-port must differ, got {', '.join(map(str, ports.values()))}")
        if self.instances < 1:
            raise BadInput(f"--instances {self.instances}: at least 1")
        if self.max_queue_delay_us < 0:
            raise BadInput(f"--max-queue-delay-us {self.max_queue_delay_us}: 0 or more microseconds")
        if self.threads is not None and self.threads < 1:
            raise BadInput(f"--threads {self.threads}: at least 1")
        if self.max_image_pixels < 1:
            raise BadInput(f"--max-image-pixels {self.max_image_pixels}: at least 1")
        if self.shutdown_timeout_s < 1:
            raise BadInput(f"--shutdown-timeout {self.shutdown_timeout_s}: at least 1 second")
        if self.log_file is not None and not self.log_file.parent.is_dir():
            raise BadInput(f"--log-file {self.log_file}: the folder {self.log_file.parent} does not exist")
        if not self.model_name or "/" in self.model_name:
            raise BadInput(f"--model-name {self.model_name!r}: a name without '/'")
        for flag, port in ports.items():
            check_port_free(self.address, port, flag)


def check_port_free(address: str, port: int, flag: str) -> None:
    """ValueError naming the flag when `address`:`port` cannot be bound (in use, or not an address of this machine)."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as error:
            reason = "already in use" if error.errno == 98 else error.strerror
            raise BadInput(f"{flag} {port}: {address}:{port} is {reason}" if error.errno == 98 else f"{flag} {port}: cannot listen on {address}:{port}: {reason}") from None


def serve(
    model: str | os.PathLike[str],
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    instances: int = 1,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
    console: Console | None = None,
    *,
    address: str = "127.0.0.1",
    model_name: str = DEFAULT_MODEL_NAME,
    score_threshold: float = 0.5,
    device: str = "auto",
    threads: int | None = None,
    max_image_pixels: int = protocol.MAX_IMAGE_PIXELS,
    shutdown_timeout_s: int = DEFAULT_SHUTDOWN_TIMEOUT_S,
    log_file: str | os.PathLike[str] | None = None,
    stop: threading.Event | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serves `model` (a deploy graph or an engine) until SIGINT or SIGTERM (or `stop` is set), then stops
    tritonserver and everything it started. `ready()` is called once the server answers. ValueError for a bad
    argument, a port in use, a model the Predictor refuses, or a server that does not start."""
    settings = ServeSettings(
        model=Path(model),
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        instances=instances,
        max_queue_delay_us=max_queue_delay_us,
        address=address,
        model_name=model_name,
        score_threshold=score_threshold,
        device=device,
        threads=threads,
        max_image_pixels=max_image_pixels,
        shutdown_timeout_s=shutdown_timeout_s,
        log_file=None if log_file is None else Path(log_file),
    )
    console = console or make_console()
    stop = stop or threading.Event()
    with _stop_on_signals(stop):
        run_server(settings, console, stop, ready)


def run_server(settings: ServeSettings, console: Console, stop: threading.Event, ready: Callable[[], None] | None = None) -> None:
    """serve()'s body, for a caller that handles signals itself: returns once `stop` is set and all is stopped."""
    settings.check()
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig
        from pytriton.triton import Triton, TritonConfig
    except ModuleNotFoundError as error:
        raise BadInput(f"serving needs {error.name}, which the runtime install leaves out: {INSTALL_HINT}") from None
    model = settings.model.resolve() if settings.model.exists() else settings.model
    backend_options: dict[str, Any] = {"device": settings.device}
    if settings.threads is not None:
        backend_options["threads"] = settings.threads
    if model.suffix == ".engine":
        backend_options = {}  # TensorRT takes neither device nor threads
    predictors = [Predictor(model, score_threshold=settings.score_threshold, **backend_options) for _ in range(settings.instances)]
    info = predictors[0].info
    _quiet_pytriton()
    with tempfile.TemporaryDirectory(prefix="maskrt-serve-") as workspace, stub_environment(console) as environment:
        log_file = settings.log_file.resolve() if settings.log_file is not None else Path(workspace) / "tritonserver.log"
        address = settings.address
        config = TritonConfig(
            http_address=address, http_port=settings.http_port, grpc_address=address, grpc_port=settings.grpc_port,
            allow_metrics=True, metrics_address=address, metrics_port=settings.metrics_port, allow_gpu_metrics=False,
            # what tritonserver waits on SIGINT for clients to close their HTTP connections (its in-flight requests
            # are done and its model unloaded by then): keep-alive clients would hold it for the whole timeout
            exit_timeout_secs=TRITONSERVER_EXIT_TIMEOUT_S,
            log_file=log_file,
            log_verbose=0,
        )
        batch = info.batch
        model_config = ModelConfig(
            batching=True,
            max_batch_size=batch,
            batcher=DynamicBatcher(
                max_queue_delay_microseconds=settings.max_queue_delay_us, preferred_batch_size=[batch] if batch > 1 else None
            ),
        )
        started = time.perf_counter()
        gate = Gate()
        phases: dict[str, float] = {}
        _become_subreaper()
        triton = Triton(config=config, workspace=Path(workspace) / "pytriton")
        try:
            triton.bind(
                model_name=settings.model_name,
                infer_func=[make_infer(predictor, settings.max_image_pixels, gate) for predictor in predictors],
                inputs=input_tensors(),
                outputs=output_tensors(),
                config=model_config,
                strict=False,
            )
            with _started_in(environment.workdir, environment.variables):
                try:
                    triton.run()
                except Exception as error:  # PyTriton says little; tritonserver's log says why
                    raise BadInput(f"{settings.model}: the server did not start: {error}; {_log_tail(log_file)}") from None
            host = settings.address
            console.print(
                f"serving {settings.model} as '{settings.model_name}' (batch {batch}, {info.input_size[0]}x{info.input_size[1]}, "
                f"{settings.instances} instance{'s' if settings.instances > 1 else ''}) on http://{host}:{settings.http_port}, "
                f"grpc {host}:{settings.grpc_port}, metrics http://{host}:{settings.metrics_port}/metrics "
                f"(started in {time.perf_counter() - started:.1f} s; Ctrl-C or SIGTERM stops it)"
            )
            if ready is not None:
                ready()
            while not stop.wait(0.5):
                if not triton.is_alive():
                    raise BadInput(f"{settings.model}: tritonserver stopped unexpectedly; {_log_tail(log_file)}")
            console.print("stopping: in-flight requests finish, new ones are refused, then tritonserver and its stubs stop")
            phases["requests"] = time.perf_counter()
            gate.close()
            if not gate.wait_idle(settings.shutdown_timeout_s):
                console.print(f"in-flight requests still running after {settings.shutdown_timeout_s} s: stopping anyway")
            phases["model"] = time.perf_counter()
            _unload_model(triton, settings)
        finally:
            phases["tritonserver"] = time.perf_counter()
            started_by_triton, tritonservers = _tritonserver_trees(), _tritonserver_pids()
            triton.stop()
            _end_leftovers(started_by_triton, reap=[pid for pid in started_by_triton if pid not in tritonservers])
            _reap_orphans()
            _stop_resource_tracker()
        if phases:
            marks = [*phases.values(), time.perf_counter()]
            spent = ", ".join(f"{name} {later - earlier:.1f} s" for name, earlier, later in zip(phases, marks, marks[1:]))
            console.print(f"stopped in {marks[-1] - marks[0]:.1f} s ({spent})")


def input_tensors() -> list[Any]:
    from pytriton.model_config import Tensor

    return [
        Tensor(name=protocol.IMAGE_INPUT, dtype=np.bytes_, shape=(1,), optional=True),
        Tensor(name=protocol.PIXELS_INPUT, dtype=np.uint8, shape=(-1, -1, 3), optional=True),
    ]


def output_tensors() -> list[Any]:
    from pytriton.model_config import Tensor

    return [
        Tensor(name="num_detections", dtype=np.int32, shape=(1,)),
        Tensor(name="boxes", dtype=np.float32, shape=(-1, 4)),
        Tensor(name="scores", dtype=np.float32, shape=(-1,)),
        Tensor(name="labels", dtype=np.int64, shape=(-1,)),
        Tensor(name="class_names", dtype=np.bytes_, shape=(-1,)),
        Tensor(name="masks_rle", dtype=np.bytes_, shape=(-1,)),
        Tensor(name="image_size", dtype=np.int32, shape=(2,)),
        Tensor(name=protocol.FULL_MASKS, dtype=np.bool_, shape=(-1, -1, -1)),
    ]


class Gate:
    """Counts the groups of requests being answered; once closed, refuses new ones (the server is stopping)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._busy = 0
        self._closed = False

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        with self._condition:
            if self._closed:
                raise BadRequest("the server is shutting down")
            self._busy += 1
        try:
            yield
        finally:
            with self._condition:
                self._busy -= 1
                self._condition.notify_all()

    def close(self) -> None:
        with self._condition:
            self._closed = True

    def wait_idle(self, timeout_s: float) -> bool:
        """True once no group is being answered, False if `timeout_s` passed first."""
        with self._condition:
            return self._condition.wait_for(lambda: self._busy == 0, timeout=timeout_s)


def make_infer(
    predictor: Predictor, max_image_pixels: int = protocol.MAX_IMAGE_PIXELS, gate: Gate | None = None
) -> Callable[[list[Any]], list[dict[str, np.ndarray]]]:
    """The function bound to one model instance: the requests Triton's batcher grouped → one response each.

    Every image of every request goes through the Predictor together, in batches of the model's batch size. A bad
    request fails the group it came in (PyTriton answers a group with one error): with the model's batch 1, each
    request is a group of its own. Once `gate` is closed, every group is refused."""
    gate = gate or Gate()

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        with gate.entered():
            return answer(requests)

    def answer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        images: list[list[np.ndarray]] = []
        problems = []
        for index, request in enumerate(requests):
            try:
                images.append(protocol.request_images(request.data, max_image_pixels))
            except BadInput as error:
                problems.append(str(error) if len(requests) == 1 else f"request {index + 1} of {len(requests)}: {error}")
        if problems:
            raise BadRequest("; ".join(problems))
        flat = [image for request_images in images for image in request_images]
        found = predictor(flat)
        assert isinstance(found, list)
        responses, start = [], 0
        for request, request_images in zip(requests, images):
            requested = request.requested_output_names or ()
            responses.append(protocol.detections_outputs(found[start : start + len(request_images)], protocol.FULL_MASKS in requested))
            start += len(request_images)
        return responses

    return infer


class BadRequest(ValueError):
    """A request the model cannot answer: its message says what is wrong.

    PyTriton sends the client `traceback.format_exception(None, error, error.__traceback__)`: a bad request shows
    no traceback, so that the client reads one line, "BadRequest: <what is wrong>"."""

    @property  # type: ignore[override]
    def __traceback__(self) -> None:  # noqa: PLW3201
        return None

    @__traceback__.setter
    def __traceback__(self, value: object) -> None:
        pass


@contextlib.contextmanager
def _started_in(workdir: Path, variables: dict[str, str]) -> Iterator[None]:
    """PyTriton starts tritonserver with this process's environment and working directory, which the stubs
    inherit: both are set for the start only."""
    saved_directory, saved_environment = os.getcwd(), dict(os.environ)
    os.environ.update(variables)
    os.chdir(workdir)
    try:
        yield
    finally:
        os.chdir(saved_directory)
        os.environ.clear()
        os.environ.update(saved_environment)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` (in the main thread only: elsewhere the caller stops it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _unload_model(triton: Any, settings: ServeSettings, timeout_s: float = 5.0) -> None:
    """Unloads the model from the running tritonserver (its stub finalises and frees its shared memory while
    tritonserver still tends it; requests arriving meanwhile get "unavailable"), then stops PyTriton's proxy for it:
    Triton.stop() would do both only after tritonserver is gone, and tritonserver's own exit gives the stubs no time
    once keep-alive HTTP clients have used up its exit timeout. Bounded by `timeout_s`: a model that has not
    unloaded by then is left to Triton.stop()."""
    import tritonclient.http as http
    from pytriton.client.auth import create_auth_headers

    address = "127.0.0.1" if settings.address in ("0.0.0.0", "") else "::1" if settings.address == "::" else settings.address
    host = f"[{address}]" if ":" in address else address
    headers = create_auth_headers(triton.get_access_token(), "http")
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(Exception), contextlib.closing(http.InferenceServerClient(f"{host}:{settings.http_port}", network_timeout=timeout_s)) as client:
        client.unload_model(settings.model_name, headers=headers)  # returns at once; the unload goes on
        while time.monotonic() < deadline and _stubs():  # unloaded when its stubs have finalised and exited
            time.sleep(0.05)
    # PyTriton's clean unloads again and waits up to 120 s for the server to be ready, which a stub that never
    # finalises keeps it from being: Triton.stop() cleans the proxy then, after ending tritonserver and its stubs.
    manager = getattr(triton, "_model_manager", None)
    if manager is not None and not _stubs():
        with contextlib.suppress(Exception):
            manager.clean()


def _become_subreaper() -> None:
    """Linux: processes orphaned below this one (a stub whose tritonserver is gone) become its children, so that
    _end_leftovers reaps them instead of leaving zombies to init."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _tritonserver_trees() -> list[int]:
    """tritonserver (this process's child) and everything below it: its Python backend stubs and theirs. Not this
    process's other children: multiprocessing's resource tracker must outlive the proxy to unlink its shared memory."""
    pids = []
    for child in process_tree(os.getpid())[1:]:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0]
            parent = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and command.endswith(b"/tritonserver"):
            pids += process_tree(child)
    return pids


def _stubs() -> list[int]:
    """The Python backend stubs running below this process's tritonserver."""
    stubs = []
    for pid in _tritonserver_trees():
        with contextlib.suppress(OSError):
            if _running(pid) and Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"/triton_python_backend_stub"):
                stubs.append(pid)
    return stubs


def _tritonserver_pids() -> set[int]:
    """This process's tritonserver children (PyTriton's sh reaps them)."""
    return {pid for pid in _tritonserver_trees() if _parent(pid) == os.getpid()}


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _end_leftovers(pids: list[int], reap: list[int], timeout_s: float = 2.0) -> None:
    """SIGKILL those of `pids` (tritonserver and what it started) still running `timeout_s` after PyTriton stopped
    them, and reap those of `reap` that are this process's children by now."""
    deadline = time.monotonic() + timeout_s
    alive = [pid for pid in pids if _running(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if _running(pid)]
    for pid in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for pid in reap:  # orphans below tritonserver are this process's children now (their subreaper): reap them
        if _parent(pid) == os.getpid():
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0 if pid in alive else os.WNOHANG)


def _reap_orphans() -> None:
    """Reaps this process's children that have ended: processes orphaned below tritonserver (a stub's resource
    tracker) that became its children as their subreaper. tritonserver itself is PyTriton's to reap, and has been."""
    for child in process_tree(os.getpid())[1:]:
        if _parent(child) == os.getpid() and not _running(child):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(child, os.WNOHANG)


def _stop_resource_tracker() -> None:
    """multiprocessing's resource tracker (PyTriton's shared memory) would outlive this process by a moment and end
    as init's zombie: stopped here, it unlinks what was left registered and is reaped."""
    import multiprocessing.resource_tracker as resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    with contextlib.suppress(Exception):
        if tracker is not None and getattr(tracker, "_pid", None) is not None:
            tracker._stop()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _log_tail(log_file: Path, lines: int = 3) -> str:
    try:
        text = [line for line in log_file.read_text(errors="replace").splitlines() if line.startswith("E")]
    except OSError:
        return "no tritonserver log"
    return "tritonserver: " + " | ".join(text[-lines:]) if text else "tritonserver logged no error"


def _quiet_pytriton() -> None:
    """PyTriton logs every failed request with its traceback at WARNING: the client has the error already."""
    logging.getLogger("pytriton").setLevel(logging.ERROR)
