"""What the rebuilt middle of a Mask R-CNN needs to know about the model, read from a torchvision model at export
(the ExportRecord, contracts/records.py), and what the command line overrides."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from maskrt.contracts.records import MASKRT_LAYOUT, DetectionSettings, ExportRecord

MIN_OPSET = 11  # the first opset with RoiAlign and NonMaxSuppression: the oldest export that export and surgery take


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
class DeployOptions:
    """How the deploy graph is made: surgery's flags, given to `trt-convert`."""

    plugins: str | None = None  # "maskrt" or "native"; None: maskrt for an export, a deploy graph's own mode
    input_size: tuple[int, int] | None = None  # fixes a dynamic-size export's H x W
    overrides: SettingsOverride = field(default_factory=SettingsOverride)
    default_anchors: bool = False  # torchvision's anchors where the export's graph does not show its own
    single_input: bool = False  # no image_sizes input; boxes clipped to H x W
    max_batch: int | None = None  # a symbolic batch of 1 to max_batch images
    opt_batch: int | None = None  # the batch its engine is tuned for (default max_batch)
    layout: str = MASKRT_LAYOUT  # the outputs: maskrt's five, or DeepStream's (records.LAYOUTS)


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
