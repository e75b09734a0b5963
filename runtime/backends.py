"""What runs a deploy graph or an engine: one small interface, two backends.

A backend takes feeds by input name ("images" [B,3,H,W] float32 letterboxed RGB 0..255, "image_sizes" [B,2] int32)
and returns the deploy graph's five outputs by name. A single-input graph (`--single-input`) reads only "images";
each backend feeds what its graph asks for, so callers may always pass both. `info` says what the model expects and
what its labels mean, `runtime` what runs it. ONNX Runtime runs here; TensorRT (maskrt.runtime.engine) is imported
only for a .engine file.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from maskrt.contracts.errors import BadInput, TensorRTUnavailable
from maskrt.contracts.files import check_input_path, read_onnx
from maskrt.contracts.records import (
    DEPLOY_KEY,
    EXPORT_KEY,
    INPUTS,
    MASKRT_LAYOUT,
    OUTPUTS,
    DeployRecord,
    read_deploy_record,
    read_precision_record,
)

if TYPE_CHECKING:
    import onnx

    from maskrt.runtime.engine import TensorRTBackend

DEVICES = ("auto", "cpu", "cuda")
# The keyword arguments each backend takes (open_backend hands each its own).
_ONNXRUNTIME_OPTIONS = ("device", "threads")
_TENSORRT_OPTIONS = ("cuda_graph", "verbose", "console")


# The DeployRecord's fields that ModelInfo carries as they are.
_FROM_RECORD = ("batch", "input_size", "image_mean", "image_std", "num_classes", "class_names", "mask_size", "plugins")


@dataclass(frozen=True)
class ModelInfo:
    """What a deploy graph or engine expects and answers: the DeployRecord's fields a runtime needs, and its
    precision."""

    batch: int  # the most images one run takes: a static model's batch, which it always runs, or a dynamic one's maximum
    input_size: tuple[int, int]  # (H, W) of the letterboxed input
    image_mean: tuple[float, ...]  # 0..1, RGB; the letterbox pads with it
    image_std: tuple[float, ...]
    num_classes: int  # including background (label 0)
    class_names: tuple[str, ...]  # by label id; empty when the export did not record them
    mask_size: int  # M of the [B,K,M,M] masks output
    single_input: bool  # True: no image_sizes input, boxes clipped to H x W
    plugins: str  # "maskrt" or "native"
    precision: str  # "fp32", "fp16" or "int8"
    dynamic_batch: bool = False  # True: runs any batch from 1 to `batch` as it is, without padding

    @classmethod
    def of(cls, record: DeployRecord, precision: str, single_input: bool, dynamic_batch: bool = False) -> ModelInfo:
        """From the DeployRecord of a deploy graph or engine, the precision of its precision or engine record, and
        whether the graph or engine reads only `images` and has a symbolic batch (what it reads decides, whatever an
        older record says)."""
        recorded = {name: getattr(record, name) for name in _FROM_RECORD}
        return cls(**recorded, single_input=single_input, precision=precision, dynamic_batch=dynamic_batch)

    def class_name(self, label: int) -> str:
        """The label's name, or its number when the model has no names for its classes."""
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)


class OnnxRuntimeBackend:
    """A deploy graph (either plugin mode; FP32, FP16 or INT8) on ONNX Runtime.

    device "auto" takes the CUDA provider when onnxruntime-gpu offers it and the CPU otherwise. Plugin nodes run on
    the CPU reference (maskrt.plugins) between sessions for the rest of the graph. `threads` sets ONNX Runtime's
    intra-op threads (None: its default, one per core). `extra_outputs`: values of the graph that `run` returns
    besides the deploy outputs (what `maskrt check` compares inside the graph); `model`: the graph at `path`, where
    the caller has read it already. `runtime` says what runs it, in words.
    """

    def __init__(
        self,
        path: Path,
        device: str = "auto",
        threads: int | None = None,
        extra_outputs: Sequence[str] = (),
        model: onnx.ModelProto | None = None,
    ):
        import onnxruntime as ort

        from maskrt.plugins.onnxruntime_ops import StagedSession, session_options

        if device not in DEVICES:
            raise BadInput(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
        self.path = Path(path)
        if model is None:
            model = read_onnx(self.path, "a deploy graph (.onnx)")
        record = read_deploy_record(model, self.path)
        if record is None:
            raise BadInput(f"{self.path}: not a maskrt deploy graph (no {DEPLOY_KEY} metadata){_how_to_deploy(model, self.path)}")
        check_layout(record, self.path)
        precision = read_precision_record(model, self.path)
        available = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise TensorRTUnavailable(
                f"{self.path}: ONNX Runtime's CUDA provider is not installed here: pip install onnxruntime-gpu "
                "(in place of onnxruntime)"
            )
        use_cuda = device == "cuda" or (device == "auto" and "CUDAExecutionProvider" in available)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        self.session = StagedSession(model, session_options(threads), providers, extra_outputs)
        self.extra_outputs = tuple(name for name in dict.fromkeys(extra_outputs) if name not in OUTPUTS)
        self.input_names = self.session.input_names
        unknown = [name for name in self.input_names if name not in INPUTS]
        if "images" not in self.input_names or unknown:
            raise BadInput(f"{self.path}: a deploy graph reads images (and image_sizes), this one reads {list(self.input_names)}")
        self._float16_input = self.session.input_types["images"] == np.float16
        self.device = "cuda" if use_cuda else "cpu"
        staged = ", staged plugins" if self.session.plugin_nodes else ""
        self.runtime = f"ONNX Runtime {ort.__version__} {self.device.upper()}{staged}"
        single_input = "image_sizes" not in self.input_names
        images = next(value for value in model.graph.input if value.name == "images")
        dynamic = images.type.tensor_type.shape.dim[0].HasField("dim_param")
        self.info = ModelInfo.of(record, precision.precision if precision else "fp32", single_input, dynamic)
        self.last_timings_ms: dict[str, float] = {}

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Collection[str] = OUTPUTS) -> dict[str, np.ndarray]:
        """The deploy outputs named in `outputs` (all five by default) and the extra outputs for one batch (of a
        dynamic-batch graph, 1 to its maximum images); `last_timings_ms` gets its "compute" time."""
        given = {name: feeds[name] for name in self.input_names}
        check_batch(self.path, self.info, len(given["images"]))
        if self._float16_input:
            given["images"] = given["images"].astype(np.float16)
        names = [name for name in OUTPUTS if name in outputs] + list(self.extra_outputs)
        started = time.perf_counter()
        values = self.session.run(names, given)
        self.last_timings_ms = {"compute": (time.perf_counter() - started) * 1e3}
        return dict(zip(names, values))


def _how_to_deploy(model: onnx.ModelProto, path: Path) -> str:
    """What to do with an ONNX model that is not a deploy graph: surgery, when it is a Mask R-CNN export (maskrt's
    metadata, or the RoiAlign nodes of torchvision's RoI heads); else there is nothing maskrt can make of it."""
    if any(prop.key == EXPORT_KEY for prop in model.metadata_props) or any(node.op_type == "RoiAlign" for node in model.graph.node):
        return f"; make one with `trt-convert {path} --surgery-only -o deploy.onnx`"
    return ", nor a Mask R-CNN export that surgery could make one of (no RoiAlign node): maskrt runs torchvision Mask R-CNNs"


def check_layout(record: DeployRecord, path: Path) -> None:
    """The runtime's backends answer in maskrt's layout; a graph or engine of another layout is for its runtime."""
    if record.layout != MASKRT_LAYOUT:
        raise BadInput(
            f"{path}: has DeepStream's outputs (--layout {record.layout}), for DeepStream's nvinfer (maskrt deepstream "
            "writes its configs); the Predictor runs graphs and engines converted without --layout"
        )


def check_batch(path: Path, info: ModelInfo, batch: int) -> None:
    """A run's batch: the model's own, or for a dynamic-batch model 1 to its maximum; BadInput in one line."""
    if info.dynamic_batch and not 1 <= batch <= info.batch:
        raise BadInput(f"{path}: a batch of {batch} images; this dynamic-batch model runs 1 to {info.batch}")
    if not info.dynamic_batch and batch != info.batch:
        raise BadInput(f"{path}: a batch of {batch} images; this model runs batches of {info.batch}")


def open_backend(path: Path, **options: Any) -> OnnxRuntimeBackend | TensorRTBackend:
    """The backend for a model file by its suffix: .onnx (ONNX Runtime) or .engine (TensorRT, imported only then).

    `options`: device ("auto" | "cpu" | "cuda") and threads for ONNX Runtime; cuda_graph, verbose and console for
    TensorRT. Each backend takes its own: an engine ignores threads, a deploy graph verbose and console, and an option
    that asks a backend for what it cannot do (an engine on the CPU, a CUDA graph on ONNX Runtime) is refused."""
    path = Path(path)
    check_input_path(path, "a deploy graph (.onnx) or an engine (.engine)")
    unknown = sorted(set(options) - set(_ONNXRUNTIME_OPTIONS) - set(_TENSORRT_OPTIONS))
    if unknown:
        raise BadInput(f"unknown backend option(s) {', '.join(unknown)}; known: {', '.join(_ONNXRUNTIME_OPTIONS + _TENSORRT_OPTIONS)}")
    if path.suffix == ".engine":
        if options.get("device", "auto") == "cpu":
            raise BadInput(f"{path}: a TensorRT engine runs on the GPU (not --device cpu); run its deploy graph (.onnx) on the CPU")
        from maskrt.runtime.engine import TensorRTBackend

        return TensorRTBackend(path, **{k: v for k, v in options.items() if k in _TENSORRT_OPTIONS})
    if path.suffix == ".onnx":
        if options.get("cuda_graph"):
            raise BadInput(f"{path}: a CUDA graph (--cuda-graph) replays a TensorRT engine's enqueue; this is not an engine")
        return OnnxRuntimeBackend(path, **{k: v for k, v in options.items() if k in _ONNXRUNTIME_OPTIONS})
    raise BadInput(f"{path}: expected a deploy graph (.onnx) or a TensorRT engine (.engine)")
