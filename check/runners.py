"""Polygraphy runners for every backend `maskrt check` compares, all fed the same letterboxed images.

- PyTorch: the torchvision model on each letterboxed image at its size in the letterbox (and on the whole canvas,
  for graphs that see only that), its answers in the deploy graph's form (check.pytorch) and its dense tensors
  (check.tensors) by forward hooks;
- every deploy graph (FP32 of either plugin mode, FP16, INT8) and engine: the runtime's own backend, as the
  Predictor, `maskrt infer` and `maskrt bench` open it (OnnxRuntimeBackend, its plugin nodes on the CPU reference
  between sessions; TensorRTBackend where TensorRT is installed), in a runner that calls its `run`, so that the
  check's numbers and failures are those of the code users run. A deploy graph's backend also outputs its dense
  tensors;
- the export (model.onnx, which no runtime backend runs): Polygraphy's OnnxrtRunner on a plain ONNX Runtime session
  of a copy that takes the deploy graph's `images` input and outputs its dense tensors.

A runner that raises on one feed is wrapped so that the failure is kept for the report and the others carry on.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

from maskrt.calib.images import ImageEntry
from maskrt.check.engines import open_engine
from maskrt.check.pytorch import deploy_outputs
from maskrt.check.tensors import Captured, DenseTensor, capture, find_dense_tensors
from maskrt.contracts.errors import BadInput
from maskrt.contracts.files import check_input_path, read_onnx
from maskrt.contracts.layers import MASK_LOGITS
from maskrt.contracts.records import (
    IMAGENET_MEAN,
    engine_record_path,
    read_deploy_record,
    read_engine_record,
    read_export_record,
    read_precision_record,
)
from maskrt.runtime.backends import OnnxRuntimeBackend
from maskrt.runtime.preprocess import Letterbox, letterbox, read_rgb

if TYPE_CHECKING:
    from rich.console import Console

    from maskrt.runtime.engine import TensorRTBackend


@dataclass(frozen=True)
class FeedShape:
    """What a backend is fed: B letterboxed images of H×W, padded with the normalisation mean."""

    batch: int
    input_size: tuple[int, int]
    image_mean: tuple[float, ...]


@dataclass
class Backend:
    """One model under comparison and the Polygraphy runner that runs it."""

    name: str
    kind: str  # "pytorch", "export", "deploy" or "engine"
    path: Path | None
    precision: str  # "fp32", "fp16" or "int8"
    plugins: str  # "maskrt", "native" or "" (PyTorch and the export have no plugin nodes)
    feed_shape: FeedShape | None  # None: takes any (PyTorch)
    dense: list[DenseTensor]  # the dense tensors it outputs (none for engines)
    runner: BaseRunner
    sees: str  # IMAGE: takes image_sizes and answers for the image alone; CANVAS: answers for the whole canvas
    runtime: str  # what runs it, in words: "ONNX Runtime 1.31.1 CPU, staged plugins", "TensorRT 10.3.0 via pycuda"
    failures: dict[int, str] = field(default_factory=dict)  # feed index -> what went wrong

    @property
    def description(self) -> str:
        what = {"pytorch": "PyTorch", "export": "export", "deploy": "deploy graph", "engine": "TensorRT engine"}[self.kind]
        parts = [what, self.precision.upper()]
        if self.plugins:
            parts.append(f"{self.plugins} plugins" if self.plugins == "maskrt" else "native ops")
        return ", ".join(parts)


# How PyTorch sees a letterboxed image: the image alone at its size in the letterbox (what a deploy graph with the
# `image_sizes` input answers for), or the whole canvas (what the export and a --single-input graph see).
IMAGE, CANVAS = "image", "canvas"


class PyTorchRunner(BaseRunner):
    """The torchvision model on the letterboxed images, answering in the deploy graph's output format as
    `{mode}:{output}` for each mode asked for; the dense tensors of the last feed are in `captured[mode]`."""

    def __init__(self, model: torch.nn.Module, feed_shape: FeedShape, modes: Sequence[str], name: str = "pytorch") -> None:
        super().__init__(name=name)
        self.model = model
        self.feed_shape = feed_shape
        self.modes = tuple(modes)
        self.captured: dict[str, Captured] = {}

    def get_input_metadata_impl(self) -> TensorMetadata:
        batch, (height, width) = self.feed_shape.batch, self.feed_shape.input_size
        metadata = TensorMetadata()
        metadata.add("images", DataType.FLOAT32, (batch, 3, height, width))
        metadata.add("image_sizes", DataType.INT32, (batch, 2))
        return metadata

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        started = time.perf_counter()
        images, sizes = feed_dict["images"], feed_dict["image_sizes"]
        fills_canvas = bool((sizes == np.array(self.feed_shape.input_size)).all())
        answers: dict[str, dict[str, np.ndarray]] = {}
        self.captured = {}
        for mode in self.modes:
            if fills_canvas and answers:  # an image that fills the canvas is the canvas: one run answers both
                answers[mode], self.captured[mode] = next(iter(answers.values())), next(iter(self.captured.values()))
                continue
            with capture(self.model) as self.captured[mode]:
                answers[mode] = deploy_outputs(self.model, images, sizes if mode == IMAGE else None)
        self.inference_time = time.perf_counter() - started
        return OrderedDict((f"{mode}:{key}", value) for mode, answer in answers.items() for key, value in answer.items())


class BackendRunner(BaseRunner):
    """A runtime backend (maskrt.runtime) as a Polygraphy runner: it calls the backend's `run`."""

    def __init__(self, backend: OnnxRuntimeBackend | TensorRTBackend, name: str) -> None:
        super().__init__(name=name)
        self.backend = backend

    def get_input_metadata_impl(self) -> TensorMetadata:
        info = self.backend.info
        metadata = TensorMetadata()
        metadata.add("images", DataType.FLOAT32, (info.batch, 3, *info.input_size))
        if "image_sizes" in self.backend.input_names:
            metadata.add("image_sizes", DataType.INT32, (info.batch, 2))
        return metadata

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = self.backend.run(feed_dict)
        self.inference_time = time.perf_counter() - started
        return OrderedDict(outputs)


class GuardedRunner(BaseRunner):
    """Runs `runner`, keeping the message of a feed it fails on instead of ending the comparison."""

    def __init__(self, runner: BaseRunner, backend: Backend) -> None:
        super().__init__(name=runner.name)
        self.runner = runner
        self.backend = backend
        self.feeds = 0

    def activate_impl(self) -> None:
        self.runner.activate()

    def get_input_metadata_impl(self) -> TensorMetadata:
        return self.runner.get_input_metadata(use_numpy_dtypes=False)

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        index, self.feeds = self.feeds, self.feeds + 1
        started = time.perf_counter()
        try:
            outputs = OrderedDict(self.runner.infer(feed_dict))
        except Exception as error:  # noqa: BLE001 (any backend error is this image's result, reported)
            self.backend.failures[index] = _one_line(error)
            outputs = OrderedDict()
        self.inference_time = time.perf_counter() - started
        return outputs

    def deactivate_impl(self) -> None:
        self.runner.deactivate()


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def pytorch_backend(model: torch.nn.Module, feed_shape: FeedShape, modes: Sequence[str]) -> Backend:
    runner = PyTorchRunner(model, feed_shape, modes)
    device = next(model.parameters()).device.type.upper()
    return Backend("pytorch", "pytorch", None, "fp32", "", None, [], runner, IMAGE, f"PyTorch {torch.__version__} {device}")


def onnx_backend(path: Path, name: str) -> Backend:
    """An export or deploy graph (told apart by its metadata), ready to run with its dense tensors."""
    model = read_onnx(path)
    dense = find_dense_tensors(model, path)
    if read_deploy_record(model, path) is None:
        return _export_backend(model, dense, path, name)
    try:
        backend = OnnxRuntimeBackend(path, extra_outputs=[t.name for t in dense], model=model)
    except BadInput:
        raise
    except Exception as error:  # noqa: BLE001 (ONNX Runtime raises its own types for a graph it refuses)
        raise BadInput(f"{path}: ONNX Runtime cannot run it: {_one_line(error)}") from None
    return _runtime_backend(backend, "deploy", dense, name)


def engine_backend(path: Path, name: str, console: Console | None = None) -> Backend:
    """A TensorRT engine and model.engine.json beside it; TensorRTUnavailable when TensorRT cannot run it here."""
    check_input_path(path, "a TensorRT engine")
    if read_engine_record(path) is None:
        raise BadInput(f"{path}: needs its {engine_record_path(path).name} beside it to be checked")
    return _runtime_backend(open_engine(path, console), "engine", [], name)


def _runtime_backend(backend: OnnxRuntimeBackend | TensorRTBackend, kind: str, dense: list[DenseTensor], name: str) -> Backend:
    """A deploy graph or engine, run by the backend the runtime opened it with."""
    info = backend.info
    feed_shape = FeedShape(info.batch, info.input_size, info.image_mean)
    sees = CANVAS if info.single_input else IMAGE
    runner = BackendRunner(backend, name)
    return Backend(name, kind, backend.path, info.precision, info.plugins, feed_shape, dense, runner, sees, backend.runtime)


def _export_backend(model: onnx.ModelProto, dense: list[DenseTensor], path: Path, name: str) -> Backend:
    """The export on a plain ONNX Runtime CPU session, in the deploy graph's form (_export_for_check)."""
    import onnxruntime as ort

    adapted, feed_shape = _export_for_check(model, dense, path)

    def session() -> ort.InferenceSession:  # what OnnxrtRunner calls when activated
        try:
            return ort.InferenceSession(adapted.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 (ONNX Runtime raises its own types for a graph it refuses)
            raise BadInput(f"{path}: ONNX Runtime cannot run it: {_one_line(error)}") from None

    precision = read_precision_record(model, path)
    runner = OnnxrtRunner(session, name=name)
    runtime = f"ONNX Runtime {ort.__version__} CPU"
    return Backend(name, "export", path, precision.precision if precision else "fp32", "", feed_shape, dense, runner, CANVAS, runtime)


def _export_for_check(model: onnx.ModelProto, dense: list[DenseTensor], path: Path) -> tuple[onnx.ModelProto, FeedShape]:
    """A copy of a torchvision export that takes the deploy graph's `images` (0..255, [B,3,H,W]) and outputs, per
    image b, `detections.b.boxes`, `.labels` and `.scores`, and the dense tensors (whose mask logits give each
    detection's M×M mask). The pasted full-size masks are cut off: check pastes every backend's masks with the
    runtime's paste."""
    graph = gs.import_onnx(model)
    inputs = [t for t in graph.inputs if t.dtype == np.float32 and t.shape is not None and len(t.shape) in (3, 4)]
    if not inputs:
        raise BadInput(f"{path}: no float32 image input ([3,H,W] or [B,3,H,W]) found")
    shape = list(inputs[0].shape)
    batch = len(inputs) if len(shape) == 3 else shape[0]
    size = shape[-2:]
    if not all(isinstance(d, int) and d > 0 for d in [batch, *size]):
        raise BadInput(f"{path}: the export has a dynamic input shape {shape}; export at a fixed size and batch")
    if len(graph.outputs) != 4 * batch:
        raise BadInput(f"{path}: expected 4 outputs per image (boxes, labels, scores, masks), found {len(graph.outputs)}")
    record = read_export_record(model, path)
    mean = record.image_mean if record is not None else IMAGENET_MEAN

    images = gs.Variable("images", np.float32, [batch, 3, *size])
    scaled = gs.Variable("images/255", np.float32, [batch, 3, *size])
    graph.nodes.append(gs.Node("Div", inputs=[images, gs.Constant("255", np.array(255, np.float32))], outputs=[scaled]))
    for b, tensor in enumerate(inputs):
        if len(shape) == 4:
            graph.nodes.append(gs.Node("Identity", inputs=[scaled], outputs=[tensor]))
        else:
            index = gs.Constant(f"image_index_{b}", np.array(b, np.int64))
            graph.nodes.append(gs.Node("Gather", inputs=[scaled, index], outputs=[tensor], attrs={"axis": 0}))
    outputs = []
    for b in range(batch):
        for tensor, what in zip(graph.outputs[4 * b : 4 * b + 3], ("boxes", "labels", "scores")):
            tensor.name = f"detections.{b}.{what}"
            outputs.append(tensor)
    tensors = graph.tensors()
    for dense_tensor in dense:
        tensor = tensors[dense_tensor.name]
        tensor.dtype = tensor.dtype or np.float32
        outputs.append(tensor)
    graph.inputs, graph.outputs = [images], outputs
    graph.cleanup().toposort()
    adapted = gs.export_onnx(graph)
    adapted.ir_version = model.ir_version
    return adapted, FeedShape(int(batch), (int(size[0]), int(size[1])), mean)


@dataclass(frozen=True)
class LoadedImage:
    entry: ImageEntry
    rgb: np.ndarray  # the original RGB uint8 [h, w, 3]
    box: Letterbox


@dataclass
class ImageFeeds:
    """Polygraphy's data loader for `maskrt check`: feed dicts of B letterboxed images (`images`, `image_sizes`).

    Unreadable images are skipped and kept in `skipped`; a last partial batch repeats its last image (its copies are
    not counted). `batches[i]` says which images feed i holds, for as long as the comparison needs them."""

    entries: Sequence[ImageEntry]
    feed_shape: FeedShape
    skipped: list[tuple[ImageEntry, str]] = field(default_factory=list)
    batches: dict[int, list[LoadedImage]] = field(default_factory=dict)

    def __iter__(self) -> Iterator[OrderedDict[str, np.ndarray]]:
        batch, size, mean = self.feed_shape.batch, self.feed_shape.input_size, self.feed_shape.image_mean
        pending: list[tuple[LoadedImage, np.ndarray]] = []
        index = 0
        for entry in self.entries:
            try:
                rgb = read_rgb(entry.path)
                canvas, box = letterbox(rgb, size, mean)
            except BadInput as error:
                self.skipped.append((entry, _one_line(error)))
                continue
            pending.append((LoadedImage(entry, rgb, box), canvas))
            if len(pending) == batch:
                yield self._feed(index, pending)
                index, pending = index + 1, []
        if pending:
            yield self._feed(index, pending + [pending[-1]] * (batch - len(pending)))

    def _feed(self, index: int, pending: list[tuple[LoadedImage, np.ndarray]]) -> OrderedDict[str, np.ndarray]:
        images = [loaded for loaded, _ in pending]
        # Copies that fill a last partial batch are not images of their own.
        self.batches[index] = [image for i, image in enumerate(images) if image not in images[:i]]
        return OrderedDict(
            images=np.stack([canvas for _, canvas in pending]),
            image_sizes=np.array([loaded.box.resized for loaded in images], np.int32),
        )

    def release(self, index: int) -> None:
        self.batches.pop(index, None)


def export_detections(outputs: dict[str, np.ndarray], backend: Backend) -> list[dict[str, np.ndarray]]:
    """The export's answers per image, in the deploy graph's form: boxes, scores, classes and M×M mask probabilities of
    each detection's class (from the mask logits, as torchvision's maskrcnn_inference picks them)."""
    assert backend.feed_shape is not None
    batch = backend.feed_shape.batch
    logits = outputs[next(t.name for t in backend.dense if t.role == MASK_LOGITS)]
    found, start = [], 0
    for b in range(batch):
        labels = outputs[f"detections.{b}.labels"].astype(np.int64)
        n = len(labels)
        rows = logits[start : start + n]
        masks = 1 / (1 + np.exp(-rows[np.arange(n), labels].astype(np.float32)))
        found.append(
            {
                "boxes": outputs[f"detections.{b}.boxes"].astype(np.float32),
                "scores": outputs[f"detections.{b}.scores"].astype(np.float32),
                "classes": labels,
                "masks": masks.astype(np.float32),
            }
        )
        start += n
    return found


def deploy_detections(outputs: dict[str, np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
    """A deploy graph's (or engine's, or PyTorch's) answers per image: its first num_detections rows."""
    found = []
    for b in range(batch):
        n = int(outputs["num_detections"][b, 0])
        found.append(
            {
                "boxes": outputs["boxes"][b, :n].astype(np.float32),
                "scores": outputs["scores"][b, :n].astype(np.float32),
                "classes": outputs["classes"][b, :n].astype(np.int64),
                "masks": outputs["masks"][b, :n].astype(np.float32),
            }
        )
    return found
