"""COCO box and mask AP of detections against a dataset's instances json, with pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrt.runtime.coco import mask_rle

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
    results: list[dict[str, object]] = []
    for box, score, label, probabilities in zip(boxes, scores, labels, masks):
        x1, y1, x2, y2 = (float(v) for v in box)
        results.append(
            {
                "image_id": int(image_id),
                "category_id": int(label),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(score),
                "segmentation": mask_rle(probabilities > MASK_THRESHOLD),
            }
        )
    return results


def evaluate(instances: Path, detections: list[dict[str, object]]) -> CocoAP:
    """Box and mask AP of `detections` (COCO results, as coco_detections writes) on the dataset `instances`."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        try:
            ground_truth = COCO(str(instances))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{instances}: not a readable COCO instances json ({error})") from None
        if not detections:  # COCO.loadRes cannot load an empty list; nothing detected scores 0
            return CocoAP(box=0.0, mask=0.0)
        results = ground_truth.loadRes(detections)
        ap = {}
        for iou_type in ("bbox", "segm"):
            evaluation = COCOeval(ground_truth, results, iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            ap[iou_type] = max(float(evaluation.stats[0]), 0.0)  # -1 means no ground truth to score against
    return CocoAP(box=ap["bbox"], mask=ap["segm"])
