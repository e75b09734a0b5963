"""COCO instance format: masks as COCO RLE and detections as results entries, shared by the datasets, the runtime's
results files and the evaluation."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as coco_mask


def mask_rle(mask: np.ndarray) -> dict[str, Any]:
    """A bool [H, W] mask as a COCO json "segmentation": [H, W] and the compressed RLE counts as text.

    pycocotools' area and toBbox read it as they read the bytes-counts RLE that encode returns.
    """
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def coco_results(
    image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, masks: np.ndarray
) -> list[dict[str, Any]]:
    """One image's detections as COCO results entries, as pycocotools' loadRes reads them: boxes [N,4] x1,y1,x2,y2
    become x, y, w, h; masks [N,H,W] bool at image size become RLE."""
    results = []
    for box, score, label, mask in zip(boxes, scores, labels, masks):
        x1, y1, x2, y2 = (float(v) for v in box)
        results.append(
            {
                "image_id": int(image_id),
                "category_id": int(label),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(score),
                "segmentation": mask_rle(mask),
            }
        )
    return results
