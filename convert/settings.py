"""What the rebuilt middle of a Mask R-CNN needs to know about the model: thresholds, top-n values, anchors,
normalisation. Read from a torchvision model (at export), stored as JSON in the ONNX graph's metadata_props."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import onnx

from maskrt.runtime.backends import DEPLOY_METADATA_KEY as DEPLOY_METADATA_KEY  # the runtime reads what surgery writes

EXPORT_METADATA_KEY = "maskrt.export"
MIN_OPSET = 11  # the first opset with RoiAlign and NonMaxSuppression: the oldest export that export and surgery take

# torchvision's MaskRCNN defaults (eval mode), the fallback when a plain export does not show a value.
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
class SettingsOverride:
    """Values given on the command line; None keeps the model's own."""

    rpn_pre_nms_top_n: int | None = None
    rpn_post_nms_top_n: int | None = None
    rpn_nms_thresh: float | None = None
    rpn_score_thresh: float | None = None
    box_score_thresh: float | None = None
    box_nms_thresh: float | None = None
    detections_per_img: int | None = None

    def apply(self, settings: DetectionSettings) -> DetectionSettings:
        given = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return replace(settings, **given)


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


def record_of(model: object, name: str, input_size: tuple[int, int], batch: int, class_names: tuple[str, ...]) -> ExportRecord:
    """The ExportRecord of a torchvision MaskRCNN."""
    rpn, heads, transform = model.rpn, model.roi_heads, model.transform  # type: ignore[attr-defined]
    anchors = rpn.anchor_generator
    settings = DetectionSettings(
        rpn_pre_nms_top_n=int(rpn._pre_nms_top_n["testing"]),
        rpn_post_nms_top_n=int(rpn._post_nms_top_n["testing"]),
        rpn_nms_thresh=float(rpn.nms_thresh),
        rpn_score_thresh=float(rpn.score_thresh),
        rpn_min_size=float(rpn.min_size),
        box_score_thresh=float(heads.score_thresh),
        box_nms_thresh=float(heads.nms_thresh),
        detections_per_img=int(heads.detections_per_img),
        rpn_box_weights=tuple(float(w) for w in rpn.box_coder.weights),
        box_weights=tuple(float(w) for w in heads.box_coder.weights),
        bbox_xform_clip=float(heads.box_coder.bbox_xform_clip),
    )
    return ExportRecord(
        model=name,
        num_classes=int(heads.box_predictor.cls_score.out_features),
        input_size=input_size,
        batch=batch,
        image_mean=tuple(float(v) for v in transform.image_mean),
        image_std=tuple(float(v) for v in transform.image_std),
        anchor_sizes=tuple(tuple(float(s) for s in level) for level in anchors.sizes),
        aspect_ratios=tuple(tuple(float(r) for r in level) for level in anchors.aspect_ratios),
        size_divisible=int(transform.size_divisible),
        settings=settings,
        class_names=class_names,
    )


def write_metadata(model: onnx.ModelProto, key: str, payload: dict[str, Any]) -> None:
    """Sets metadata_props[key] to payload as JSON, replacing an earlier value."""
    kept = [p for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=key, value=json.dumps(payload))


def read_metadata(model: onnx.ModelProto, key: str) -> Any:
    """The JSON payload of metadata_props[key], as write_metadata stores it; None when the key is absent."""
    raw = {p.key: p.value for p in model.metadata_props}.get(key)
    return None if raw is None else json.loads(raw)


def write_export_record(model: onnx.ModelProto, record: ExportRecord) -> None:
    write_metadata(model, EXPORT_METADATA_KEY, asdict(record))


def read_export_record(model: onnx.ModelProto) -> ExportRecord | None:
    data = read_metadata(model, EXPORT_METADATA_KEY)
    if data is None:
        return None
    data["settings"] = DetectionSettings(**_tuples(data["settings"]))
    return ExportRecord(**_tuples(data))


def _tuples(data: dict[str, Any]) -> dict[str, Any]:
    """JSON gives lists; the dataclasses hold tuples (hashable, immutable)."""

    def convert(value: object) -> object:
        return tuple(convert(v) for v in value) if isinstance(value, list) else value

    return {k: convert(v) for k, v in data.items()}
