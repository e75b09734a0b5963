"""Detection-by-detection comparison of two answers: the deploy graph's output format (compare_detections, M×M masks),
and detections in original pixels with masks pasted at the image's size (compare_image, what `maskrt check` reports).
"""

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


def pair_detections(
    reference_boxes: np.ndarray,
    reference_scores: np.ndarray,
    reference_classes: np.ndarray,
    candidate_boxes: np.ndarray,
    candidate_classes: np.ndarray,
    min_iou: float,
) -> tuple[list[tuple[int, int, float]], list[int], list[int]]:
    """Pairs each reference detection, best score first, with the unclaimed candidate detection of the same class
    whose box overlaps it most (IoU ≥ min_iou): the pairs (reference row, candidate row, IoU), the reference rows
    left alone (missing) and the candidate rows nobody claimed (extra)."""
    n_cand = len(candidate_boxes)
    ious = box_iou(torch.from_numpy(np.asarray(reference_boxes, np.float32)), torch.from_numpy(np.asarray(candidate_boxes, np.float32))).numpy()
    ious = np.where(np.asarray(reference_classes)[:, None] == np.asarray(candidate_classes)[None, :], ious, -1.0)
    pairs, missing = [], []
    claimed = np.zeros(n_cand, bool)
    for i in np.argsort(-np.asarray(reference_scores), kind="stable"):
        options = np.where(claimed, -1.0, ious[i])
        j = int(np.argmax(options)) if n_cand else -1
        if j < 0 or options[j] < min_iou:
            missing.append(int(i))
            continue
        claimed[j] = True
        pairs.append((int(i), j, float(options[j])))
    return pairs, missing, [int(j) for j in np.flatnonzero(~claimed)]


def compare_detections(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], min_iou: float = 0.99
) -> list[ImageComparison]:
    """Pairs detections (pair_detections) of two answers in the deploy graph's output format, image by image, then
    measures score and M×M mask differences of the pairs."""
    results = []
    for b in range(len(reference["num_detections"])):
        n_ref, n_cand = int(reference["num_detections"][b, 0]), int(candidate["num_detections"][b, 0])
        pairs, missing, extra = pair_detections(
            reference["boxes"][b, :n_ref],
            reference["scores"][b, :n_ref],
            reference["classes"][b, :n_ref],
            candidate["boxes"][b, :n_cand],
            candidate["classes"][b, :n_cand],
            min_iou,
        )
        result = ImageComparison(matched=len(pairs), missing=missing, extra=extra)
        for i, j, iou in pairs:
            result.worst_iou = min(result.worst_iou, iou)
            result.worst_score = max(result.worst_score, abs(float(reference["scores"][b, i] - candidate["scores"][b, j])))
            result.worst_mask = max(result.worst_mask, float(np.abs(reference["masks"][b, i] - candidate["masks"][b, j]).max()))
        results.append(result)
    return results


@dataclass(frozen=True)
class Found:
    """One image's detections in original pixels: boxes [N,4] x1,y1,x2,y2, scores [N], classes [N] (label ids) and
    masks bool [N,h,w] pasted at the image's size."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray


# Detections of the same object: same class and box IoU ≥ MATCH_IOU (COCO's loosest match).
MATCH_IOU = 0.5


@dataclass(frozen=True)
class Agreement:
    """One image, one backend against the reference: what matched, and how closely."""

    matched: int
    missed: int  # reference detections the backend does not have
    extra: int  # backend detections the reference does not have
    score_differences: tuple[float, ...]  # |score - reference score| of each pair
    box_ious: tuple[float, ...]
    mask_ious: tuple[float, ...]  # of the pasted masks
    pairs: tuple[tuple[int, int], ...]  # (reference row, candidate row) of each matched detection
    disagreement: float  # the scores of unpaired detections, plus (1 - mask IoU) x score of each pair


def compare_image(reference: Found, candidate: Found, min_iou: float = MATCH_IOU) -> Agreement:
    pairs, missing, extra = pair_detections(
        reference.boxes, reference.scores, reference.classes, candidate.boxes, candidate.classes, min_iou
    )
    mask_ious = tuple(mask_iou(reference.masks[i], candidate.masks[j]) for i, j, _ in pairs)
    return Agreement(
        matched=len(pairs),
        missed=len(missing),
        extra=len(extra),
        score_differences=tuple(abs(float(reference.scores[i]) - float(candidate.scores[j])) for i, j, _ in pairs),
        box_ious=tuple(iou for _, _, iou in pairs),
        mask_ious=mask_ious,
        pairs=tuple((i, j) for i, j, _ in pairs),
        disagreement=float(
            sum(reference.scores[i] for i in missing)
            + sum(candidate.scores[j] for j in extra)
            + sum((1.0 - iou) * reference.scores[i] for (i, _, _), iou in zip(pairs, mask_ious))
        ),
    )


def mask_iou(first: np.ndarray, second: np.ndarray) -> float:
    union = int(np.count_nonzero(first | second))
    return float(np.count_nonzero(first & second)) / union if union else 1.0
