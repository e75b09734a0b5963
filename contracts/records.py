"""The records that stages hand to each other, and the deploy graph's names: written and read only here.

    model.onnx      "maskrt.export" metadata     ExportRecord      maskrt export → surgery
    deploy.onnx     "maskrt.deploy" metadata     DeployRecord      surgery → precision, build, runtime, check
    model.fp16.onnx "maskrt.precision" metadata  PrecisionRecord   precision → build, runtime, check
    model.engine    model.engine.json beside it  EngineRecord      build → runtime, check

A graph keeps the records of the stages before it (an INT8 graph carries its DeployRecord). The dataclasses are the
schema: every field's annotation says how its JSON value is read, each reader gets the same defaults, and a record
that cannot be read is refused in one sentence naming its file and field. Records carry `format`; one without it was
written before formats were numbered and reads as format 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from maskrt.contracts.errors import BadInput

if TYPE_CHECKING:
    import onnx

_Record = TypeVar("_Record")

FORMAT_VERSION = 1
EXPORT_KEY = "maskrt.export"
DEPLOY_KEY = "maskrt.deploy"
PRECISION_KEY = "maskrt.precision"

# The deploy graph's tensors, in the order the graph lists them, and their dtypes. A `--single-input` graph has no
# image_sizes. Inputs: images [B,3,H,W] letterboxed RGB 0..255, image_sizes [B,2] (h, w) of each image in the
# letterbox. Outputs: num_detections [B,1], boxes [B,K,4] (x1, y1, x2, y2 in input pixels), scores [B,K], classes
# [B,K] (label ids), masks [B,K,M,M] (probabilities of each detection's class); rows past num_detections are zero.
INPUTS = ("images", "image_sizes")
OUTPUTS = ("num_detections", "boxes", "scores", "classes", "masks")
DTYPES = {
    "images": np.float32,
    "image_sizes": np.int32,
    "num_detections": np.int32,
    "boxes": np.float32,
    "scores": np.float32,
    "classes": np.int32,
    "masks": np.float32,
}
# The outputs of a deploy graph of DeepStream's layout (`--layout deepstream`, single input), which DeepStream's own
# Mask R-CNN parser, NvDsInferParseCustomMrcnnTLTV2, reads as they are: generate_detections float32 [B,K,6], each row
# y1, x1, y2, x2 (input pixels), label id, score; mask_fcn_logits/BiasAdd float32 [B,K,C,M,M], each row's mask (the
# probabilities of `masks`) in the channel of its class, the other channels 0.
MASKRT_LAYOUT, DEEPSTREAM_LAYOUT = "maskrt", "deepstream"
LAYOUTS = (MASKRT_LAYOUT, DEEPSTREAM_LAYOUT)
DEEPSTREAM_OUTPUTS = ("generate_detections", "mask_fcn_logits/BiasAdd")
# The symbolic first dimension of a dynamic-batch deploy graph's inputs and outputs (`trt-convert --max-batch`): the
# one dimension that may be symbolic; each graph made from it keeps it, and an engine's optimization profile ranges it.
BATCH_DIM = "batch"
# The names of the nodes surgery builds (the rebuilt middle and the input normalisation): the precision passes and
# the engine build keep them FP32.
REBUILT_PREFIX = "/maskrt"

# torchvision's MaskRCNN defaults (eval mode): what a plain export that does not show a value is taken to use.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
DEFAULT_ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 5


@dataclass(frozen=True)
class DetectionSettings:
    """The eval-mode settings of torchvision's RegionProposalNetwork and RoIHeads."""

    rpn_pre_nms_top_n: int = 1000
    rpn_post_nms_top_n: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_score_thresh: float = 0.0
    rpn_min_size: float = 1e-3
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100
    box_min_size: float = 1e-2  # RoIHeads.postprocess_detections' remove_small_boxes
    rpn_box_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    box_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    bbox_xform_clip: float = math.log(1000.0 / 16)


@dataclass(frozen=True)
class ExportRecord:
    """What `maskrt export` writes into model.onnx so surgery need not guess from the graph."""

    model: str
    num_classes: int
    input_size: tuple[int, int]
    batch: int
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    anchor_sizes: tuple[tuple[float, ...], ...] = DEFAULT_ANCHOR_SIZES
    aspect_ratios: tuple[tuple[float, ...], ...] = DEFAULT_ASPECT_RATIOS
    size_divisible: int = 32
    settings: DetectionSettings = field(default_factory=DetectionSettings)
    class_names: tuple[str, ...] = ()
    format: int = FORMAT_VERSION


@dataclass(frozen=True)
class DeployRecord:
    """What surgery built: the model a deploy graph (and every graph and engine made from it) answers for."""

    plugins: str  # "maskrt" or "native"
    plugin_namespace: str
    plugin_version: str
    batch: int  # the most images one run takes: a static graph's batch, a dynamic-batch graph's maximum
    input_size: tuple[int, int]  # (H, W) of the letterboxed input
    image_mean: tuple[float, ...]  # 0..1, RGB; the letterbox pads with it
    image_std: tuple[float, ...]
    num_classes: int  # including background (label 0)
    mask_size: int  # M of the [B,K,M,M] masks output
    class_names: tuple[str, ...]  # by label id; empty when the export did not record them
    settings: DetectionSettings
    source_sha256: str  # of the export surgery read
    single_input: bool = False  # True: no image_sizes input, boxes clipped to H x W
    # A dynamic-batch graph (BATCH_DIM) runs 1 to max_batch (= batch) images, and its engine is tuned for opt_batch;
    # None for both: a static graph of `batch` images.
    max_batch: int | None = None
    opt_batch: int | None = None
    layout: str = MASKRT_LAYOUT  # its outputs: maskrt's OUTPUTS, or DEEPSTREAM_OUTPUTS
    format: int = FORMAT_VERSION

    @property
    def dynamic_batch(self) -> bool:
        return self.max_batch is not None

    def batch_range(self) -> tuple[int, int, int]:
        """(min, opt, max) images per run: (1, opt_batch, max_batch) for a dynamic-batch graph, (B, B, B) for a
        static one."""
        if self.max_batch is None:
            return self.batch, self.batch, self.batch
        return 1, self.opt_batch or self.max_batch, self.max_batch


def check_batch_range(max_batch: int | None, opt_batch: int | None, where: object) -> None:
    """--max-batch N and --opt-batch M: 1 <= M <= N, and M only with N; BadInput naming the flag otherwise."""
    if max_batch is not None and max_batch < 1:
        raise BadInput(f"{where}: --max-batch must be at least 1, got {max_batch}")
    if opt_batch is None:
        return
    if max_batch is None:
        raise BadInput(f"{where}: --opt-batch tunes a dynamic-batch graph; give --max-batch too")
    if not 1 <= opt_batch <= max_batch:
        raise BadInput(f"{where}: --opt-batch must be between 1 and --max-batch {max_batch}, got {opt_batch}")


@dataclass(frozen=True)
class PrecisionRecord:
    """How an FP16 or INT8 graph was made from its deploy graph."""

    precision: str  # "fp16" or "int8" (contracts.precisions)
    # The type of what is neither FP32 nor INT8: "fp16", or "fp32" where a TensorRT <= 10 build lowers it; None where
    # the record does not say.
    float: str | None = None
    calibration_method: str | None = None  # INT8: entropy, max or percentile
    calibration_images: int | None = None
    deploy_sha256: str | None = None  # of the deploy graph it was made from
    format: int = FORMAT_VERSION


@dataclass(frozen=True)
class EngineRecord:
    """model.engine.json: what an engine was built from and for. Written flat, the deploy record's fields among the
    engine's own."""

    deploy: DeployRecord
    tensorrt_version: str
    gpu: str | None  # None where the build could not read it
    compute_capability: str | None  # "87" for sm_87
    precision: str
    maskrt_version: str | None = None
    deploy_sha256: str | None = None
    onnx_sha256: str | None = None  # of the graph TensorRT built (deploy, FP16 or INT8)
    engine_bytes: int | None = None  # tells a truncated copy
    format: int = FORMAT_VERSION


def engine_record_path(engine: Path) -> Path:
    """model.engine → model.engine.json, where trt-convert writes what the engine was built for."""
    return engine.with_name(engine.name + ".json")


def write_metadata(model: onnx.ModelProto, key: str, payload: dict[str, Any]) -> None:
    """Sets metadata_props[key] to payload as JSON, replacing an earlier value."""
    kept = [p for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=key, value=json.dumps(payload))


def read_metadata(model: onnx.ModelProto, key: str) -> Any:
    """The JSON payload of metadata_props[key], as write_metadata stores it; None when the key is absent; BadInput
    when it is not JSON."""
    raw = {p.key: p.value for p in model.metadata_props}.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise BadInput(f"metadata '{key}' is not valid JSON") from None


def write_export_record(model: onnx.ModelProto, record: ExportRecord) -> None:
    write_metadata(model, EXPORT_KEY, asdict(record))


def write_deploy_record(model: onnx.ModelProto, record: DeployRecord) -> None:
    write_metadata(model, DEPLOY_KEY, asdict(record))


def write_precision_record(model: onnx.ModelProto, record: PrecisionRecord) -> None:
    write_metadata(model, PRECISION_KEY, asdict(record))


def read_export_record(model: onnx.ModelProto, where: object = "the graph") -> ExportRecord | None:
    return _read_graph_record(model, EXPORT_KEY, ExportRecord, where)


def read_deploy_record(model: onnx.ModelProto, where: object = "the graph") -> DeployRecord | None:
    """The graph's DeployRecord; None when it is not a deploy graph (nor made from one). `where` names the graph in
    a refusal."""
    record = _read_graph_record(model, DEPLOY_KEY, DeployRecord, where)
    return None if record is None else _consistent(record, where)


def read_precision_record(model: onnx.ModelProto, where: object = "the graph") -> PrecisionRecord | None:
    """The graph's PrecisionRecord; None for an FP32 graph."""
    return _read_graph_record(model, PRECISION_KEY, PrecisionRecord, where)


def engine_record_json(record: EngineRecord) -> bytes:
    engine = {f.name: getattr(record, f.name) for f in fields(record) if f.name != "deploy"}
    deploy = {k: v for k, v in asdict(record.deploy).items() if k != "format"}
    return json.dumps({**engine, **deploy}, indent=2).encode()


def read_engine_record(engine: Path) -> EngineRecord | None:
    """model.engine.json as trt-convert wrote it; None when there is none; BadInput when it cannot be read."""
    path = engine_record_path(engine)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"{path}: cannot be read ({getattr(error, 'strerror', None) or error})") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise BadInput(f"{path}: not valid JSON; rebuild the engine with trt-convert, which writes it") from None
    return parse_engine_record(data, path)


def parse_engine_record(data: object, where: object) -> EngineRecord:
    """An EngineRecord from the JSON value of model.engine.json; BadInput naming `where` and the field."""
    what = "an engine record written by trt-convert"
    mapping = _json_object(data, where)
    own = [f for f in fields(EngineRecord) if f.name != "deploy"]
    missing = [f.name for f in own if _required(f) and f.name not in mapping]
    missing += [f.name for f in fields(DeployRecord) if _required(f) and f.name not in mapping]
    if missing:
        raise BadInput(f"{where}: not {what} (no {', '.join(missing)})")
    deploy = _consistent(_record(DeployRecord, {k: v for k, v in mapping.items() if k != "format"}, where, what), where)
    return _record(EngineRecord, {**mapping, "deploy": deploy}, where, what)


def _consistent(record: DeployRecord, where: object) -> DeployRecord:
    """A dynamic-batch record's range: max_batch is the batch, and 1 <= opt_batch <= max_batch."""
    if record.max_batch is not None and record.max_batch != record.batch:
        raise BadInput(f"{where}: 'max_batch' is {record.max_batch} but 'batch' is {record.batch}; they are one number")
    if record.opt_batch is not None and not 1 <= record.opt_batch <= (record.max_batch or 0):
        raise BadInput(f"{where}: 'opt_batch' is {record.opt_batch}, outside the batch range 1..{record.max_batch}")
    return record



def _read_graph_record(model: onnx.ModelProto, key: str, kind: type[_Record], where: object) -> _Record | None:
    try:
        data = read_metadata(model, key)
    except BadInput as error:
        raise BadInput(f"{where}: {error}") from None
    if data is None:
        return None
    what = f"the '{key}' metadata maskrt writes"
    mapping = _json_object(data, where)
    missing = [f.name for f in fields(kind) if _required(f) and f.name not in mapping]  # type: ignore[arg-type]
    if missing:
        raise BadInput(f"{where}: '{key}' metadata is not {what} (no {', '.join(missing)})")
    return _record(kind, mapping, where, what)


def _json_object(data: object, where: object) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise BadInput(f"{where}: expected a JSON object, got {type(data).__name__}")
    return data


def _required(f: Field[Any]) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _record(kind: type[_Record], mapping: Mapping[str, Any], where: object, what: str) -> _Record:
    """The record of `kind` from the JSON values of its fields (unknown keys are left out: a newer maskrt may add
    fields); each value is read as its field's annotation says."""
    written = mapping.get("format", 1)
    if isinstance(written, int) and not isinstance(written, bool) and written > FORMAT_VERSION:
        raise BadInput(f"{where}: written by a newer maskrt (record format {written}, this one reads {FORMAT_VERSION}); upgrade maskrt")
    values = {}
    for f in fields(kind):  # type: ignore[arg-type]
        if f.name not in mapping:
            continue
        read = _READERS[str(f.type)]
        try:
            values[f.name] = read(mapping[f.name])
        except BadInput as inner:  # a nested record's field
            raise BadInput(f"{where}: {inner}") from None
        except (TypeError, ValueError, OverflowError):
            shown = json.dumps(mapping[f.name])[:60] if _is_json(mapping[f.name]) else type(mapping[f.name]).__name__
            raise BadInput(f"{where}: '{f.name}' is {shown}, not {_DESCRIBED[str(f.type)]} ({what})") from None
    return kind(**values)


def _is_json(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _whole(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError
    return value


def _real(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError
    return float(value)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _optional(read: Callable[[object], Any]) -> Callable[[object], Any]:
    return lambda value: None if value is None else read(value)


def _sequence(read: Callable[[object], Any], length: int | None = None) -> Callable[[object], tuple[Any, ...]]:
    def read_all(value: object) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
            raise TypeError
        return tuple(read(item) for item in value)

    return read_all


def _settings(value: object) -> DetectionSettings:
    if not isinstance(value, dict):
        raise TypeError
    return _record(DetectionSettings, value, "'settings'", "detection settings")


def _as_is(value: object) -> object:
    return value


# How each field's JSON value is read, by the field's annotation, and how a refusal describes what was expected.
_READERS: dict[str, Callable[[object], Any]] = {
    "str": _text,
    "int": _whole,
    "float": _real,
    "bool": _flag,
    "str | None": _optional(_text),
    "int | None": _optional(_whole),
    "tuple[int, int]": _sequence(_whole, 2),
    "tuple[float, ...]": _sequence(_real),
    "tuple[str, ...]": _sequence(_text),
    "tuple[tuple[float, ...], ...]": _sequence(_sequence(_real)),
    "DetectionSettings": _settings,
    "DeployRecord": _as_is,
}
_DESCRIBED = {
    "str": "text",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "str | None": "text or null",
    "int | None": "a whole number or null",
    "tuple[int, int]": "two whole numbers",
    "tuple[float, ...]": "a list of numbers",
    "tuple[str, ...]": "a list of texts",
    "tuple[tuple[float, ...], ...]": "a list of lists of numbers",
    "DetectionSettings": "an object of detection settings",
    "DeployRecord": "a deploy record",
}
