"""COCO box and mask AP of detections against a dataset's instances json, with pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrt.contracts.errors import BadInput
from maskrt.runtime.coco import coco_results

MASK_THRESHOLD = 0.5  # mask probability at which a pixel belongs to the instance, as torchvision's COCO evaluation


@dataclass(frozen=True)
class CocoAP:
    """AP averaged over IoU 0.50:0.95 (COCOeval's stats[0]) for boxes and for masks."""

    box: float
    mask: float


def coco_detections(
    image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, masks: np.ndarray
) -> list[dict[str, object]]:
    """One image's detections as COCO results: boxes [N,4] x1,y1,x2,y2, scores [N], labels [N] (category ids),
    masks [N,H,W] probabilities at image size."""
    return coco_results(image_id, boxes, scores, labels, masks > MASK_THRESHOLD)


def evaluate(instances: Path, detections: list[dict[str, object]]) -> CocoAP:
    """Box and mask AP of `detections` (COCO results, as coco_detections writes) on the dataset `instances`."""
    ground_truth = load_ground_truth(instances)
    scores = score(ground_truth, detections, ground_truth.getImgIds())
    return CocoAP(box=scores.box["AP"] or 0.0, mask=scores.mask["AP"] or 0.0)  # None: no ground truth to score against


# COCOeval's summary, stats[0..5]: AP over IoU 0.50:0.95, at 0.50, at 0.75, and for small, medium and large objects.
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass(frozen=True)
class CocoScores:
    """One backend's COCO scores, AP in pycocotools' 0..1: the summary and AP per class (by category name), for boxes
    and for masks. None where the ground truth has nothing to score (COCOeval's -1)."""

    box: dict[str, float | None]
    mask: dict[str, float | None]
    box_per_class: dict[str, float | None]
    mask_per_class: dict[str, float | None]


# What pycocotools' index and the scores per class read of each entry, and of which JSON type.
_ENTRY_FIELDS = {
    "images": {"id": int},
    "annotations": {"id": int, "image_id": int, "category_id": int},
    "categories": {"id": int, "name": str},
}


def load_ground_truth(instances: Path) -> COCO:
    """pycocotools' COCO of an instances json; BadInput naming the file and what is wrong when it cannot be read or
    is not shaped as COCO's, which is checked here: pycocotools asserts, or fails on whatever its code meets first."""
    try:
        dataset = json.loads(instances.read_bytes())
    except (OSError, ValueError) as error:  # a folder, no permission, not JSON, not UTF-8
        raise BadInput(f"{instances}: not a readable COCO instances json ({error})") from None
    if not isinstance(dataset, dict):
        raise BadInput(f"{instances}: not a COCO instances json (a JSON {type(dataset).__name__}, not an object)")
    for key, fields in _ENTRY_FIELDS.items():
        entries = dataset.get(key, [])
        if not isinstance(entries, list):
            raise BadInput(f"{instances}: \"{key}\" is not a list")
        for index, entry in enumerate(entries):
            wrong = [name for name, kind in fields.items() if not isinstance(entry, dict) or type(entry.get(name)) is not kind]
            if wrong:
                raise BadInput(f"{instances}: {key}[{index}] needs {', '.join(wrong)} of the right type, got {entry!r:.80}")
    ground_truth = COCO()
    ground_truth.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints what it indexes
        ground_truth.createIndex()
    return ground_truth


def score(ground_truth: COCO, detections: list[dict[str, object]], image_ids: list[int]) -> CocoScores:
    """COCO box and mask scores of `detections` on the images `image_ids` of `ground_truth`, as pycocotools'
    COCOeval computes them with params.imgIds set to those images."""
    summaries: dict[str, dict[str, float | None]] = {}
    per_class: dict[str, dict[str, float | None]] = {}
    names = {c["id"]: c["name"] for c in ground_truth.loadCats(ground_truth.getCatIds())}
    for iou_type in ("bbox", "segm"):
        if not detections or not image_ids:  # COCO.loadRes cannot load an empty list; nothing detected scores 0
            summaries[iou_type] = {stat: 0.0 for stat in STATS}
            per_class[iou_type] = {name: 0.0 for name in names.values()}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), iou_type)
            evaluation.params.imgIds = sorted(image_ids)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        summaries[iou_type] = {stat: _ap(value) for stat, value in zip(STATS, evaluation.stats)}
        # precision[T, R, K, A, M]: IoU thresholds, recall steps, categories, area ranges (0: all), maxDets (-1: 100).
        precision = evaluation.eval["precision"][:, :, :, 0, -1]
        per_class[iou_type] = {}
        for k, category in enumerate(evaluation.params.catIds):
            valid = precision[:, :, k][precision[:, :, k] > -1]
            per_class[iou_type][names[category]] = float(valid.mean()) if valid.size else None
    return CocoScores(summaries["bbox"], summaries["segm"], per_class["bbox"], per_class["segm"])


def _ap(value: float) -> float | None:
    return None if value < 0 else float(value)
