"""TensorRT engines: model.engine, checked against model.engine.json beside it, run with pycuda (docs/design.md,
"Engines").

An engine runs only where it was built: the same TensorRT version, a GPU of the same compute capability, and for a
`--plugins maskrt` engine the same plugin version. model.engine.json (written with the engine by trt-convert) says
what it was built for; a mismatch is refused in one sentence naming what differs and the command that rebuilds it,
before TensorRT is asked to deserialize anything.

Execution: tensors bound by name, page-locked host buffers, one device buffer per tensor, one stream, CUDA events
around the host-to-device copies, the compute and the device-to-host copies. pycuda works in the device's primary
context, the one TensorRT's CUDA runtime uses, so both see the same memory and stream (no pycuda.autoinit context of
its own). TensorRT >= 10: set_tensor_address + execute_async_v3, optionally replayed as a CUDA graph (plugin-mode
engines: a native engine's NonMaxSuppression has a data-dependent output size, which stream capture cannot hold);
TensorRT 8.6 (JetPack 6.0; 8.5, JetPack 5.1, has the same API): bindings + execute_async_v2.

A dynamic-batch engine (`trt-convert --max-batch`) has one optimization profile over the batch: profile 0 is selected
on the stream, the buffers are sized for the profile's maximum (every input set to it, the outputs' shapes read from
the context), and each run sets its inputs' shapes and reads its outputs' back, as NVIDIA's samples do: TensorRT >= 10
get_tensor_profile_shape, set_input_shape and get_tensor_shape; TensorRT 8.x get_profile_shape, set_binding_shape and
get_binding_shape (samples/python/efficientdet/infer.py of each release, and Polygraphy's TrtRunner).

TensorRT, pycuda and cuda-python are imported when an engine is opened, never by importing this module.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from rich.console import Console

from maskrt.contracts.errors import BadInput, TensorRTUnavailable
from maskrt.contracts.plugins import PLUGIN_NAMESPACE, PLUGIN_VERSION
from maskrt.contracts.precisions import PRECISIONS
from maskrt.contracts.records import (
    DTYPES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OUTPUTS,
    EngineRecord,
    engine_record_path,
    read_engine_record,
)
from maskrt.contracts.signals import deferred_interrupts
from maskrt.plugins import failures
from maskrt.plugins.cuda import INSTALL_HINT, check_cuda
from maskrt.runtime.backends import ModelInfo, check_layout
from maskrt.runtime.progress import make_console
from maskrt.runtime.tensorrt_log import tensorrt_logger

if TYPE_CHECKING:
    import pycuda.driver as cuda
    import tensorrt as trt

    from maskrt.runtime.gpu_paste import GpuPaste



@dataclass(frozen=True)
class Machine:
    """What an engine must have been built for to run here."""

    tensorrt_version: str
    gpu: str
    compute_capability: str  # "87" for sm_87
    plugin_namespace: str = PLUGIN_NAMESPACE
    plugin_version: str = PLUGIN_VERSION


def check_record(engine: Path, record: EngineRecord, machine: Machine) -> list[str]:
    """Refuses (ValueError, one sentence) an engine built for another TensorRT version, GPU architecture or plugin
    version; returns warnings for what TensorRT still runs (another GPU of the same compute capability)."""
    built: list[str] = []
    here: list[str] = []
    if record.tensorrt_version != machine.tensorrt_version:
        built.append(f"TensorRT {record.tensorrt_version}")
        here.append(f"TensorRT {machine.tensorrt_version}")
    known_gpu = record.compute_capability is not None  # None: the build could not read its GPU
    if known_gpu and record.compute_capability != machine.compute_capability:
        built.append(f"{record.gpu} (sm_{record.compute_capability})")
        here.append(f"{machine.gpu} (sm_{machine.compute_capability})")
    plugins = (record.deploy.plugin_namespace, record.deploy.plugin_version)
    other_plugins = record.deploy.plugins == "maskrt" and plugins != (machine.plugin_namespace, machine.plugin_version)
    if other_plugins:
        built.append(f"maskrt plugins {plugins[0]} version {plugins[1]}")
        here.append(f"maskrt plugins {machine.plugin_namespace} version {machine.plugin_version}")
    if built:
        # The deploy graph beside the engine holds plugin nodes of the old version: those need surgery again.
        command = rebuild_command(engine, record, from_deploy=not other_plugins)
        raise BadInput(
            f"{engine}: built for {' and '.join(built)}, but this machine has {' and '.join(here)}; "
            f"rebuild it here: {command}"
        )
    warnings = []
    if not known_gpu:
        warnings.append(
            f"{engine}: its {engine_record_path(engine).name} does not say which GPU it was built for; TensorRT "
            f"refuses it here if that was not an sm_{machine.compute_capability} GPU: {rebuild_command(engine, record)}"
        )
    elif record.gpu != machine.gpu:
        warnings.append(
            f"{engine}: built on {record.gpu}, running on {machine.gpu} (both sm_{machine.compute_capability}); "
            f"TensorRT runs it, but its kernels were timed on the other GPU: for the best speed rebuild it here: "
            f"{rebuild_command(engine, record)}"
        )
    return warnings


def rebuild_command(engine: Path, record: EngineRecord, from_deploy: bool = True) -> str:
    """The trt-convert line that builds this engine again on this machine: from the deploy graph trt-convert left
    beside it when there is one (it keeps the graph's settings), else from the source ONNX with the record's flags."""
    deploy = engine.with_name(f"{engine.stem}.{PRECISIONS['fp32'].suffix}.onnx")
    if from_deploy and deploy.is_file():
        source, flags = str(deploy), []
    else:
        source = "<source onnx>"
        flags = [] if record.deploy.plugins != "native" else ["--plugins native"]
        flags += ["--single-input"] if record.deploy.single_input else []
    if PRECISIONS[record.precision].calibration:
        flags.append("--calib-images <images folder>")
    return " ".join(["trt-convert", source, "--precision", record.precision, *flags, "-o", str(engine)])


def check_engine_file(engine: Path, record: EngineRecord | None) -> bytes:
    """The engine's bytes; an empty file, or one shorter or longer than the record says, is refused before TensorRT
    reads it."""
    try:
        data = engine.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{engine}: file not found") from None
    except OSError as error:
        raise BadInput(f"{engine}: cannot be read ({error.strerror})") from None
    if not data:
        raise BadInput(f"{engine}: is empty, not a TensorRT engine")
    expected = record.engine_bytes if record is not None else None
    if expected is not None and expected != len(data):
        state = "truncated" if len(data) < expected else "longer than it was written"
        raise BadInput(
            f"{engine}: {state} ({len(data)} bytes, {engine_record_path(engine).name} says {expected}); "
            "copy it again or rebuild it with trt-convert"
        )
    return data


def info_from_engine(shapes: Mapping[str, tuple[int, ...]], dynamic_batch: bool = False) -> ModelInfo:
    """What a model needs to be fed when there is no model.engine.json: what the engine's tensors say (the shapes
    its buffers hold: a dynamic-batch engine's at its profile's maximum batch)."""
    batch, _, height, width = shapes["images"]
    return ModelInfo(
        batch=batch,
        input_size=(height, width),
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        num_classes=0,
        class_names=(),
        mask_size=shapes["masks"][-1],
        single_input="image_sizes" not in shapes,
        plugins="unknown",
        precision="unknown",
        dynamic_batch=dynamic_batch,
    )


@dataclass(frozen=True)
class _Tensor:
    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


class TensorRTBackend:
    """A TensorRT engine on GPU 0, fed and read like OnnxRuntimeBackend (maskrt.runtime.backends).

    `run(feeds)` returns the five deploy outputs by name; `last_timings_ms` holds its "host_to_device", "compute" and
    "device_to_host" times, measured with CUDA events; `runtime` says what runs it, in words. `paste_masks` pastes the
    last run's masks on the GPU where `gpu_paste` says it can (cuda-python installed). `cuda_graph` replays the enqueue
    as a CUDA graph (TensorRT >= 10), captured on the first run.
    """

    def __init__(
        self, path: Path, cuda_graph: bool = False, verbose: bool = False, console: Console | None = None
    ) -> None:
        self.path = Path(path)
        console = console or make_console()
        record = read_engine_record(self.path)
        if record is not None:
            check_layout(record.deploy, self.path)
        else:
            console.print(
                f"{engine_record_path(self.path)}: not found; running {self.path.name} without checking its TensorRT "
                "version, GPU and plugins, with the input size and batch the engine reports, no class names, and "
                "torchvision's default normalisation mean for the letterbox padding",
                style="yellow",
            )
        data = check_engine_file(self.path, record)
        _require_gpu_stack(self.path)
        import pycuda.driver as cuda
        import tensorrt as trt

        try:
            cuda.init()
            device = cuda.Device(0)
            machine = Machine(trt.__version__, device.name(), "".join(map(str, device.compute_capability())))
        except cuda.Error as error:
            raise TensorRTUnavailable(f"{self.path}: no usable CUDA GPU here ({error})") from None
        self.tensorrt_major = int(machine.tensorrt_version.split(".")[0])
        if record is not None:
            for warning in check_record(self.path, record, machine):
                console.print(warning, style="yellow")
        self._register_plugins(record)

        self._context: cuda.Context | None = device.retain_primary_context()
        self._context.push()
        try:
            self._open(data, verbose, console)
        except BaseException:
            cuda.Context.pop()
            self._context.detach()
            self._context = None
            raise
        cuda.Context.pop()
        shapes = {name: host.shape for name, host in self._host.items()}
        dynamic = self.batch_range is not None
        self.info = (
            info_from_engine(shapes, dynamic)
            if record is None
            else ModelInfo.of(record.deploy, record.precision, single_input="image_sizes" not in shapes, dynamic_batch=dynamic)
        )
        self.input_names = tuple(t.name for t in self._tensors if t.is_input)
        self.cuda_graph = cuda_graph and self.tensorrt_major >= 10 and self.info.plugins != "native"
        if cuda_graph and self.info.plugins == "native":
            console.print(
                f"{self.path}: --cuda-graph: a --plugins native engine's NonMaxSuppression layer has an output size that "
                "depends on the data, which CUDA stream capture cannot hold; running without a CUDA graph",
                style="yellow",
            )
        # The paste kernel is launched with cuda-python, which has no release for Python 3.8 (JetPack 5.1): there the
        # Predictor reads the masks back and pastes them on the CPU.
        self.gpu_paste = _cuda_python_installed()
        self._console = console
        self.runtime = f"TensorRT {machine.tensorrt_version} via pycuda{', CUDA graph' if self.cuda_graph else ''}"
        self._graph: Any = None  # a CUgraphExec, captured in the thread that first runs, at one batch
        self._graph_thread: int | None = None
        self._graph_batch: int | None = None
        self._paste: GpuPaste | None = None
        self.last_timings_ms: dict[str, float] = {}

    def _register_plugins(self, record: EngineRecord | None) -> None:
        """maskrt's plugin creators, registered before deserialization, which looks them up by name; without a
        record they are registered whenever this TensorRT can take them (>= 10), in case the engine uses them."""
        from maskrt.plugins import register

        if self.tensorrt_major < 10 or (record is not None and record.deploy.plugins != "maskrt"):
            return
        try:
            register()
        except ImportError as error:  # PluginsUnavailable: TensorRT < 10, or no cuda-python
            if record is not None:
                raise TensorRTUnavailable(f"{self.path}: uses maskrt's plugins, which cannot load here: {error}") from None

    def _open(self, data: bytes, verbose: bool, console: Console) -> None:
        """Deserializes the engine, checks its tensors against the deploy graph's and allocates their buffers."""
        import pycuda.driver as cuda
        import tensorrt as trt

        self._logger = tensorrt_logger(console, verbose, warnings=True)
        self._errors: list[str] = self._logger.errors
        if hasattr(trt, "init_libnvinfer_plugins"):  # ROIAlign_TRT of native engines; the lean runtime has no plugins
            trt.init_libnvinfer_plugins(self._logger, "")
        self._runtime = trt.Runtime(self._logger)
        failures.clear()
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BadInput(f"{self.path}: {failures.take() or _deserialize_failure(self._errors)}")
        self._engine = engine
        self._tensors = _io_tensors(engine, self.tensorrt_major)
        names = {t.name for t in self._tensors}
        if "images" not in names or not set(OUTPUTS) <= names or not names <= set(DTYPES):
            raise BadInput(
                f"{self.path}: not a maskrt engine: its tensors are {sorted(names)}, a deploy graph has images "
                f"(and image_sizes) in and {', '.join(OUTPUTS)} out"
            )
        for tensor in self._tensors:
            if any(dim < 0 for dim in tensor.shape[1:]):
                raise BadInput(
                    f"{self.path}: tensor {tensor.name} has a dynamic shape {list(tensor.shape)}; maskrt engines are "
                    "static but for the batch"
                )
            if tensor.dtype != np.dtype(DTYPES[tensor.name]):
                raise BadInput(
                    f"{self.path}: tensor {tensor.name} is {tensor.dtype}, a deploy graph's is {np.dtype(DTYPES[tensor.name])}"
                )
        self._execution = engine.create_execution_context()
        if self._execution is None:
            reason = failures.take() or "; ".join(self._errors) or "out of GPU memory?"
            raise BadInput(f"{self.path}: TensorRT could not create an execution context: {reason}")
        self._stream = cuda.Stream()
        self._events = [cuda.Event() for _ in range(4)]
        # (min, opt, max) images per run of a dynamic-batch engine's profile; None for a static engine.
        self.batch_range = _batch_range(engine, self._tensors, self.tensorrt_major)
        if self.batch_range is not None:
            if not self._execution.set_optimization_profile_async(0, self._stream.handle):
                raise BadInput(f"{self.path}: TensorRT could not select the engine's optimization profile 0")
            self._set_batch(self.batch_range[2])  # the buffers hold the largest batch
        shapes = self._run_shapes = self._shapes()  # every tensor's shape at the batch the context is set to
        self._batch = shapes["images"][0]
        self._host = {t.name: cuda.pagelocked_empty(shapes[t.name], t.dtype) for t in self._tensors}
        self._device = {t.name: cuda.mem_alloc(max(self._host[t.name].nbytes, 1)) for t in self._tensors}
        if self.tensorrt_major >= 10:
            for name, allocation in self._device.items():
                self._execution.set_tensor_address(name, int(allocation))
        else:
            self._bindings = [int(self._device[t.name]) for t in self._tensors]  # _io_tensors lists them by binding

    def _set_batch(self, batch: int) -> None:
        """Every input's shape at `batch` images, in the context (a dynamic-batch engine)."""
        for index, tensor in enumerate(self._tensors):
            if not tensor.is_input:
                continue
            shape = (batch, *tensor.shape[1:])
            if self.tensorrt_major >= 10:
                accepted = self._execution.set_input_shape(tensor.name, shape)
            else:  # TensorRT 8.x: by binding index, which _io_tensors lists them by
                accepted = cast(Any, self._execution).set_binding_shape(index, shape)
            if not accepted:
                raise BadInput(f"{self.path}: TensorRT refused {tensor.name} of shape {list(shape)} ({_last_error(self._errors)})")

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape as the context has it now: the outputs' follow the inputs' batch."""
        shapes = {}
        for index, tensor in enumerate(self._tensors):
            if self.tensorrt_major >= 10:
                dims = self._execution.get_tensor_shape(tensor.name)
            else:
                dims = cast(Any, self._execution).get_binding_shape(index)
            shapes[tensor.name] = tuple(int(dims[d]) for d in range(len(dims)))
        return shapes

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Collection[str] = OUTPUTS) -> dict[str, np.ndarray]:
        """Runs one batch; returns the `outputs` named (all five by default) as arrays. Outputs not asked for stay on
        the GPU, where paste_masks reads the masks."""
        import pycuda.driver as cuda

        given = {name: np.asarray(feeds[name]) for name in self.input_names if name in feeds}
        batch = self._checked_batch(given)
        unknown = set(outputs) - set(OUTPUTS)
        if unknown:
            raise BadInput(f"unknown outputs {sorted(unknown)}; the engine has {', '.join(OUTPUTS)}")
        for name, array in given.items():
            np.copyto(self._host[name][:batch], array, casting="same_kind")
        start, uploaded, computed, downloaded = self._events
        with self._active():
            if self.batch_range is not None and batch != self._batch:  # as Polygraphy's TrtRunner, only when it changes
                self._set_batch(batch)
                self._run_shapes = self._shapes()  # the outputs' shapes follow, read back from the context
                self._batch = batch
            shapes = self._run_shapes
            start.record(self._stream)
            for name in self.input_names:
                cuda.memcpy_htod_async(self._device[name], self._host[name][:batch], self._stream)
            uploaded.record(self._stream)
            with deferred_interrupts():  # TensorRT calls the Python plugins back: Ctrl-C waits until it returns
                self._enqueue()
            computed.record(self._stream)
            for name in outputs:
                cuda.memcpy_dtoh_async(self._host[name][: shapes[name][0]], self._device[name], self._stream)
            downloaded.record(self._stream)
            downloaded.synchronize()
        self.last_timings_ms = {
            "host_to_device": uploaded.time_since(start),
            "compute": computed.time_since(uploaded),
            "device_to_host": downloaded.time_since(computed),
        }
        return {name: self._host[name][: shapes[name][0]].copy() for name in OUTPUTS if name in outputs}

    def _checked_batch(self, given: Mapping[str, np.ndarray]) -> int:
        """The batch of the feeds: every input given, of the engine's shape (of a dynamic-batch engine, at 1 to its
        maximum batch, one for all); BadInput in one line otherwise."""
        batches = set()
        for name in self.input_names:
            if name not in given:
                raise BadInput(f"{self.path}: the engine reads {name}, which was not given")
            wanted, got = self._host[name].shape, given[name].shape
            if (self.batch_range is None and got != wanted) or got[1:] != wanted[1:]:
                raise BadInput(f"{self.path}: {name} must be {list(wanted)}, got {list(got)}")
            batches.add(got[0] if got else 0)
        if len(batches) != 1:
            raise BadInput(f"{self.path}: the inputs differ in batch ({sorted(batches)})")
        (batch,) = batches
        if self.batch_range is not None and not 1 <= batch <= self.batch_range[2]:
            raise BadInput(f"{self.path}: a batch of {batch} images; the engine runs 1 to {self.batch_range[2]} (its optimization profile)")
        return batch

    def _enqueue(self) -> None:
        if self.tensorrt_major < 10:
            self._succeeded(cast(Any, self._execution).execute_async_v2(self._bindings, self._stream.handle))
        elif not self.cuda_graph:
            self._succeeded(self._execution.execute_async_v3(self._stream.handle))
        else:
            if self._graph is None or self._graph_thread != threading.get_ident() or self._graph_batch != self._batch:
                # Stream capture is per thread; TensorRT does its lazy set-up in a first enqueue outside a capture.
                self._succeeded(self._execution.execute_async_v3(self._stream.handle))
                self._stream.synchronize()
                if self._graph is not None:
                    _destroy_graph(self._graph)
                    self._graph = None
                self._graph = _capture(self._stream.handle, lambda: self._execution.execute_async_v3(self._stream.handle))
                self._graph_thread = threading.get_ident()
                self._graph_batch = self._batch  # the capture holds this batch's shapes
                if self._graph is None:
                    # As trtexec does: an engine with operations that stream capture cannot hold runs without a graph.
                    self._console.print(
                        f"{self.path}: the engine holds operations that CUDA graph capture cannot hold; running it "
                        "without a CUDA graph",
                        style="yellow",
                    )
                    self.cuda_graph = False
                    self._succeeded(self._execution.execute_async_v3(self._stream.handle))
                    return
            _launch_graph(self._graph, self._stream.handle)

    def _succeeded(self, enqueued: bool) -> None:
        if not enqueued:
            reason = failures.take() or _last_error(self._errors)
            raise RuntimeError(f"{self.path}: TensorRT could not run the engine: {reason}")

    def paste_masks(
        self, index: int, rows: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int], threshold: float = 0.5
    ) -> np.ndarray:
        """bool [N,h,w]: the last run's masks of image `index` (its detections `rows`), pasted on the GPU into an
        image of `image_size` at `boxes` [N,4] (x1,y1,x2,y2 in that image's pixels), as
        maskrt.runtime.postprocess.paste_masks pastes them on the CPU."""
        from maskrt.runtime.gpu_paste import GpuPaste

        _, detections, mask_size, _ = self._host["masks"].shape
        batch = self._batch
        if not 0 <= index < batch:
            raise BadInput(f"image index {index} is outside the batch of {batch}")
        rows = np.asarray(rows)
        if rows.size and (rows.min() < 0 or rows.max() >= detections):
            raise BadInput(f"detection rows must lie in 0..{detections - 1}")
        with self._active():
            if self._paste is None:
                self._paste = GpuPaste(self._stream)
            masks = int(self._device["masks"]) + index * detections * mask_size * mask_size * 4
            return self._paste(masks, mask_size, rows, boxes, image_size, threshold)

    def close(self) -> None:
        """Frees the GPU memory and releases the primary context; the backend cannot run after this."""
        if self._context is None:
            return
        with self._active():
            if self._paste is not None:
                self._paste.free()
            if self._graph is not None:
                _destroy_graph(self._graph)
            for allocation in self._device.values():
                allocation.free()
            del self._execution, self._engine, self._runtime
            # pycuda frees these through the context they were made in: before the context is released.
            self._paste, self._host, self._device = None, {}, {}
            del self._stream, self._events
        self._context.detach()
        self._context = None

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        """The primary context made current in this thread (runs may come from any thread), then popped."""
        import pycuda.driver as cuda

        if self._context is None:
            raise BadInput(f"{self.path}: the engine was closed")
        self._context.push()
        try:
            yield
        finally:
            cuda.Context.pop()

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _require_gpu_stack(path: Path) -> None:
    """TensorRTUnavailable (exit code 3) saying what to install when tensorrt or pycuda cannot be imported."""
    try:
        import tensorrt as trt

        trt.Runtime  # noqa: B018  (tensorrt-stubs alone import as an empty namespace package)
    except (ImportError, AttributeError):
        raise TensorRTUnavailable(
            f"{path}: running a TensorRT engine needs TensorRT, which is not installed here: {INSTALL_HINT}"
        ) from None
    try:
        import pycuda.driver  # noqa: F401
    except ImportError as error:
        raise TensorRTUnavailable(f"{path}: running a TensorRT engine needs pycuda ({error}): {INSTALL_HINT}") from None


def _cuda_python_installed() -> bool:
    try:
        return importlib.util.find_spec("cuda.bindings.driver") is not None
    except ImportError:  # no `cuda` package at all
        return False


def _deserialize_failure(errors: list[str]) -> str:
    """Why TensorRT returned no engine, in words, from what it logged."""
    reason = errors[0].strip() if errors else "TensorRT gave no reason"
    if "plugin" in reason.lower():
        return (
            f"the engine uses a TensorRT plugin that is not registered here ({reason}); maskrt registers its own "
            "(pip install 'maskrt[tensorrt]' for cuda-python), other plugins must be loaded before the engine"
        )
    return f"TensorRT cannot read this engine ({reason}): a damaged or truncated file, or one built by another TensorRT"


def _batch_range(engine: trt.ICudaEngine, tensors: list[_Tensor], tensorrt_major: int) -> tuple[int, int, int] | None:
    """(min, opt, max) batch of optimization profile 0, read from the engine's `images`; None when its batch is static."""
    index, images = next((i, t) for i, t in enumerate(tensors) if t.name == "images")
    if images.shape[0] >= 0:
        return None
    if tensorrt_major >= 10:
        shapes = engine.get_tensor_profile_shape("images", 0)
    else:  # TensorRT 8.x: by profile, then binding index
        shapes = cast(Any, engine).get_profile_shape(0, index)
    low, opt, high = (int(shape[0]) for shape in shapes)
    return low, opt, high


def _last_error(errors: list[str]) -> str:
    return errors[-1] if errors else "no reason given"


def _io_tensors(engine: trt.ICudaEngine, tensorrt_major: int) -> list[_Tensor]:
    """The engine's inputs and outputs: by tensor name on TensorRT >= 10, by binding on 8.x."""
    import tensorrt as trt

    nptype = cast("Callable[[trt.DataType], type]", trt.nptype)  # untyped in the stubs; a string: Python 3.8 cannot subscript Callable
    if tensorrt_major >= 10:
        tensors = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dims = engine.get_tensor_shape(name)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = np.dtype(nptype(engine.get_tensor_dtype(name)))
            tensors.append(_Tensor(name, is_input, tuple(dims[d] for d in range(len(dims))), dtype))
        return tensors
    engine8 = cast(Any, engine)  # TensorRT 8.x's binding API, which TensorRT 10 removed (and its stubs lack)
    return [
        _Tensor(
            str(engine8.get_binding_name(i)),
            bool(engine8.binding_is_input(i)),
            tuple(int(d) for d in engine8.get_binding_shape(i)),
            np.dtype(nptype(engine8.get_binding_dtype(i))),
        )
        for i in range(engine8.num_bindings)
    ]


def _capture(stream: int, enqueue: Any) -> Any:
    """A CUDA graph of what `enqueue` puts on `stream`, instantiated (cuda-python's driver API: pycuda has none); None
    when the enqueue cannot be captured (trtexec's TrtCudaGraph.endCaptureOnError: the capture is ended, its partial
    graph destroyed, and the caller runs without a graph)."""
    from cuda.bindings import driver

    handle = driver.CUstream(stream)
    check_cuda(driver.cuStreamBeginCapture(handle, driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), "starting a CUDA graph capture")
    try:
        captured = enqueue()
    finally:
        status, graph = driver.cuStreamEndCapture(handle)
    if not captured or status == driver.CUresult.CUDA_ERROR_STREAM_CAPTURE_INVALIDATED:
        if int(graph):
            check_cuda(driver.cuGraphDestroy(graph), "releasing the captured graph")
        return None
    check_cuda((status, graph), "ending the CUDA graph capture")
    try:
        return check_cuda(driver.cuGraphInstantiate(graph, 0), "instantiating the CUDA graph")
    finally:
        check_cuda(driver.cuGraphDestroy(graph), "releasing the captured graph")


def _launch_graph(executable: Any, stream: int) -> None:
    from cuda.bindings import driver

    check_cuda(driver.cuGraphLaunch(executable, driver.CUstream(stream)), "launching the CUDA graph")


def _destroy_graph(executable: Any) -> None:
    from cuda.bindings import driver

    check_cuda(driver.cuGraphExecDestroy(executable), "releasing the CUDA graph")
