"""The tests' own detection matching, independent of maskrt.check.compare: how one answer in the deploy graph's
output format (num_detections [B,1], boxes [B,K,4], scores [B,K], classes [B,K], masks [B,K,M,M]) lines up with a
reference answer, image by image.

Matching is greedy, as COCO matches detections to ground truth: the reference's detections, highest score first (ties
in row order), each claim the not yet claimed candidate detection of the same class whose box overlaps theirs most
(torchvision's box IoU, in float64), if that IoU is at least `min_iou`; ties in IoU go to the lower candidate row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import box_iou


@dataclass
class Matching:
    """One image: which detections matched, which did not, and how far apart the matched ones are."""

    pairs: list[tuple[int, int]] = field(default_factory=list)  # (reference row, candidate row), in claiming order
    missing: list[int] = field(default_factory=list)  # reference rows that claimed nothing
    extra: list[int] = field(default_factory=list)  # candidate rows that nothing claimed, ascending
    ious: list[float] = field(default_factory=list)  # box IoU of each pair
    worst_iou: float = 1.0  # the smallest box IoU of a pair (1 when nothing matched)
    worst_score: float = 0.0  # the largest |score difference| of a pair
    worst_mask: float = 0.0  # the largest |difference| of one M×M mask probability, over all pairs

    @property
    def matched(self) -> int:
        return len(self.pairs)


def box_ious(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """[N,M] IoU of x1,y1,x2,y2 boxes, by torchvision.ops.box_iou in float64."""
    return box_iou(
        torch.as_tensor(np.asarray(first, np.float64).reshape(-1, 4)),
        torch.as_tensor(np.asarray(second, np.float64).reshape(-1, 4)),
    ).numpy()


def pair_rows(
    reference_boxes: np.ndarray,
    reference_scores: np.ndarray,
    reference_classes: np.ndarray,
    candidate_boxes: np.ndarray,
    candidate_classes: np.ndarray,
    min_iou: float,
) -> Matching:
    """Pairs one image's detections (the module's rule); fills pairs, ious, missing and extra."""
    ious = box_ious(reference_boxes, candidate_boxes)
    claimed = [False] * len(candidate_boxes)
    result = Matching()
    order = sorted(range(len(reference_boxes)), key=lambda i: (-float(reference_scores[i]), i))
    for i in order:
        best, best_iou = -1, 0.0
        for j in range(len(candidate_boxes)):
            if claimed[j] or int(candidate_classes[j]) != int(reference_classes[i]):
                continue
            if ious[i, j] >= min_iou and (best < 0 or ious[i, j] > best_iou):
                best, best_iou = j, float(ious[i, j])
        if best < 0:
            result.missing.append(i)
        else:
            claimed[best] = True
            result.pairs.append((i, best))
            result.ious.append(best_iou)
    result.extra = [j for j, taken in enumerate(claimed) if not taken]
    return result


def match_detections(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], min_iou: float = 0.99
) -> list[Matching]:
    """Each image's Matching of `candidate` against `reference` (deploy graph outputs), with the worst box IoU, score
    difference and M×M mask difference of its pairs."""
    results = []
    for b in range(len(reference["num_detections"])):
        n, m = int(reference["num_detections"][b, 0]), int(candidate["num_detections"][b, 0])
        image = pair_rows(
            reference["boxes"][b, :n],
            reference["scores"][b, :n],
            reference["classes"][b, :n],
            candidate["boxes"][b, :m],
            candidate["classes"][b, :m],
            min_iou,
        )
        for (i, j), iou in zip(image.pairs, image.ious):
            score = abs(float(reference["scores"][b, i]) - float(candidate["scores"][b, j]))
            mask = np.abs(reference["masks"][b, i].astype(np.float64) - candidate["masks"][b, j].astype(np.float64))
            image.worst_iou = min(image.worst_iou, iou)
            image.worst_score = max(image.worst_score, score)
            image.worst_mask = max(image.worst_mask, float(mask.max()))
        results.append(image)
    return results
