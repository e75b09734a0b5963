"""Detection-by-detection comparison of two answers in the deploy graph's output format."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import box_iou


@dataclass
class ImageComparison:
    """How one image's candidate detections line up with the reference's."""

    matched: int = 0
    missing: list[int] = field(default_factory=list)  # reference rows with no candidate of the same class and box
    extra: list[int] = field(default_factory=list)  # candidate rows no reference detection claimed
    worst_iou: float = 1.0
    worst_score: float = 0.0
    worst_mask: float = 0.0  # max abs difference of M×M mask probabilities


def compare_detections(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], min_iou: float = 0.99
) -> list[ImageComparison]:
    """Pairs each reference detection, best score first, with the unclaimed candidate detection of the same class
    whose box overlaps it most (IoU ≥ min_iou), then measures score and mask differences of the pairs."""
    results = []
    for b in range(len(reference["num_detections"])):
        n_ref, n_cand = int(reference["num_detections"][b, 0]), int(candidate["num_detections"][b, 0])
        ious = box_iou(torch.from_numpy(reference["boxes"][b, :n_ref]), torch.from_numpy(candidate["boxes"][b, :n_cand])).numpy()
        same_class = reference["classes"][b, :n_ref, None] == candidate["classes"][b, None, :n_cand]
        ious = np.where(same_class, ious, -1.0)
        result = ImageComparison()
        claimed = np.zeros(n_cand, bool)
        for i in np.argsort(-reference["scores"][b, :n_ref], kind="stable"):
            options = np.where(claimed, -1.0, ious[i])
            j = int(np.argmax(options)) if n_cand else -1
            if j < 0 or options[j] < min_iou:
                result.missing.append(int(i))
                continue
            claimed[j] = True
            result.matched += 1
            result.worst_iou = min(result.worst_iou, float(options[j]))
            result.worst_score = max(result.worst_score, abs(float(reference["scores"][b, i] - candidate["scores"][b, j])))
            mask_diff = np.abs(reference["masks"][b, i] - candidate["masks"][b, j]).max()
            result.worst_mask = max(result.worst_mask, float(mask_diff))
        result.extra = [int(j) for j in np.flatnonzero(~claimed)]
        results.append(result)
    return results
