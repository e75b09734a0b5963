"""maskrt.check.compare on its own: hand-built detections whose pairing and differences are known by construction,
and random detections judged by pycocotools (its box and RLE mask IoU, and COCOeval's greedy matching of detections
to ground truth, which is pair_detections' rule with the reference as COCO's detections and the candidate as its
ground truth). The tests' own matching (tests/matching.py), which the other tests judge with, is held to the same
pycocotools answers."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrt.check.compare import MATCH_IOU, Found, compare_detections, compare_image, mask_iou, pair_detections

from matching import match_detections, pair_rows

K, M = 6, 4  # rows per image and mask side of the hand-built deploy outputs
SQUARE = (10.0, 10.0, 50.0, 50.0)


Row = tuple[Sequence[float], float, int]  # box x1,y1,x2,y2, score, class


def answer(*images: list[Row], masks: list[list[np.ndarray]] | None = None) -> dict[str, np.ndarray]:
    """Deploy graph outputs of hand-built images, each a list of (box, score, class); M×M masks 0.5 unless given.
    Rows past num_detections hold garbage, which nothing may read."""
    out = {
        "num_detections": np.zeros((len(images), 1), np.int32),
        "boxes": np.tile(np.array([0, 0, 200, 200], np.float32), (len(images), K, 1)),
        "scores": np.full((len(images), K), 0.99, np.float32),
        "classes": np.full((len(images), K), 1, np.int32),
        "masks": np.full((len(images), K, M, M), 7.0, np.float32),
    }
    for b, rows in enumerate(images):
        out["num_detections"][b, 0] = len(rows)
        for i, (box, score, label) in enumerate(rows):
            out["boxes"][b, i], out["scores"][b, i], out["classes"][b, i] = box, score, label
            out["masks"][b, i] = 0.5 if masks is None else masks[b][i]
    return out


def pairs_of(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], b: int, min_iou: float
) -> tuple[list[tuple[int, int, float]], list[int], list[int]]:
    """pair_detections of image b."""
    n, m = int(reference["num_detections"][b, 0]), int(candidate["num_detections"][b, 0])
    return pair_detections(
        reference["boxes"][b, :n], reference["scores"][b, :n], reference["classes"][b, :n],
        candidate["boxes"][b, :m], candidate["classes"][b, :m], min_iou,
    )  # fmt: skip


# --- pair_detections and compare_detections, answers known by construction -------------------------------------


def test_identical_answers_match_row_for_row_and_exactly() -> None:
    same = answer(
        [(SQUARE, 0.9, 1), ([60, 60, 90, 120], 0.8, 2), ([0, 0, 30, 20], 0.6, 1)],
        [([5, 5, 25, 45], 0.7, 3)],
    )
    for image, n in zip(compare_detections(same, same), (3, 1)):
        assert (image.matched, image.missing, image.extra) == (n, [], [])
        assert (image.worst_iou, image.worst_score, image.worst_mask) == (1.0, 0.0, 0.0)
    pairs, missing, extra = pairs_of(same, same, 0, 0.99)
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 0), (1, 1), (2, 2)] and not missing and not extra
    assert all(iou == 1.0 for _, _, iou in pairs)


def test_candidate_rows_in_another_order_pair_by_box_and_class() -> None:
    rows = [(SQUARE, 0.9, 1), ([60, 60, 90, 120], 0.8, 2), ([100, 0, 140, 30], 0.6, 1)]
    reference, candidate = answer(rows), answer([rows[2], rows[0], rows[1]])
    pairs, missing, extra = pairs_of(reference, candidate, 0, 0.99)
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 1), (1, 2), (2, 0)] and not missing and not extra


def test_a_missing_detection_is_the_reference_row_left_alone() -> None:
    reference = answer([(SQUARE, 0.9, 1), ([60, 60, 90, 120], 0.8, 2), ([100, 0, 140, 30], 0.6, 1)])
    candidate = answer([(SQUARE, 0.9, 1), ([100, 0, 140, 30], 0.6, 1)])
    (image,) = compare_detections(reference, candidate)
    assert (image.matched, image.missing, image.extra) == (2, [1], [])


def test_an_extra_detection_is_the_candidate_row_nobody_claimed() -> None:
    reference = answer([(SQUARE, 0.9, 1)])
    candidate = answer([([120, 120, 160, 170], 0.4, 1), (SQUARE, 0.9, 1), ([0, 100, 20, 130], 0.3, 2)])
    (image,) = compare_detections(reference, candidate)
    assert (image.matched, image.missing, image.extra) == (1, [], [0, 2])


def test_the_same_box_of_another_class_is_missing_and_extra() -> None:
    (image,) = compare_detections(answer([(SQUARE, 0.9, 1)]), answer([(SQUARE, 0.9, 2)]))
    assert (image.matched, image.missing, image.extra) == (0, [0], [0])
    assert (image.worst_iou, image.worst_score, image.worst_mask) == (1.0, 0.0, 0.0)  # no pair, nothing measured


@pytest.mark.parametrize(
    ("height", "min_iou", "pairs"),
    [
        (50.0, 0.5, 1),  # IoU exactly 0.5: the threshold is inclusive
        (50.01, 0.5, 1),  # IoU 0.5001
        (49.99, 0.5, 0),  # IoU 0.4999
        (99.5, 0.99, 1),  # IoU 0.995 at the default threshold
        (98.9, 0.99, 0),  # IoU 0.989
    ],
)
def test_iou_just_above_or_below_the_threshold(height: float, min_iou: float, pairs: int) -> None:
    """A 100×100 box against one of the same width and `height` rows, inside it: IoU = height / 100."""
    reference, candidate = answer([([0, 0, 100, 100], 0.9, 1)]), answer([([0, 0, 100, height], 0.9, 1)])
    (image,) = compare_detections(reference, candidate, min_iou=min_iou)
    assert (image.matched, len(image.missing), len(image.extra)) == (pairs, 1 - pairs, 1 - pairs)
    if pairs:
        assert image.worst_iou == pytest.approx(height / 100, abs=1e-6)


def test_the_higher_score_claims_first_and_takes_the_closest_box() -> None:
    """Two reference boxes of one class that both overlap both candidates: the higher score (the second row) claims
    first, and takes the candidate its box overlaps most (IoU 90/95 over 60/95); the other row gets what is left."""
    reference = answer([([0, 0, 100, 100], 0.6, 1), ([0, 0, 100, 95], 0.9, 1)])
    candidate = answer([([0, 0, 100, 60], 0.5, 1), ([0, 0, 100, 90], 0.5, 1)])
    pairs, missing, extra = pairs_of(reference, candidate, 0, 0.5)
    assert [(i, j) for i, j, _ in pairs] == [(1, 1), (0, 0)] and not missing and not extra
    assert [iou for _, _, iou in pairs] == pytest.approx([90 / 95, 0.6])
    pairs, missing, extra = pairs_of(reference, candidate, 0, 0.7)
    assert [(i, j) for i, j, _ in pairs] == [(1, 1)] and missing == [0] and extra == [0]


def test_score_ties_go_to_the_lower_reference_row() -> None:
    """Two reference rows of equal score compete for one candidate that overlaps the second more: the first row,
    claiming first, takes it anyway."""
    reference = answer([([0, 0, 100, 80], 0.7, 1), ([0, 0, 100, 100], 0.7, 1)])
    candidate = answer([([0, 0, 100, 100], 0.7, 1)])
    pairs, missing, extra = pairs_of(reference, candidate, 0, 0.5)
    assert [(i, j) for i, j, _ in pairs] == [(0, 0)] and missing == [1] and not extra


def test_empty_images() -> None:
    nothing, two = answer([]), answer([(SQUARE, 0.9, 1), ([60, 60, 90, 120], 0.5, 2)])
    (image,) = compare_detections(nothing, nothing)
    assert (image.matched, image.missing, image.extra) == (0, [], [])
    assert (image.worst_iou, image.worst_score, image.worst_mask) == (1.0, 0.0, 0.0)
    (image,) = compare_detections(nothing, two)
    assert (image.matched, image.missing, image.extra) == (0, [], [0, 1])
    (image,) = compare_detections(two, nothing)
    assert (image.matched, sorted(image.missing), image.extra) == (0, [0, 1], [])
    assert pair_detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0), np.zeros((0, 4)), np.zeros(0), 0.5) == ([], [], [])


def test_scores_and_masks_off_by_a_little() -> None:
    """One image, two pairs: scores 0.05 and 0.01 apart (one higher, one lower), and one mask probability of one pair
    off by 0.25."""
    masks = [np.full((M, M), 0.5, np.float32) for _ in range(2)]
    off = [mask.copy() for mask in masks]
    off[1][2, 3] = 0.75
    reference = answer([(SQUARE, 0.9, 1), ([60, 60, 90, 120], 0.8, 2)], masks=[masks])
    candidate = answer([(SQUARE, 0.95, 1), ([60, 60, 90, 120.3], 0.81, 2)], masks=[off])
    (image,) = compare_detections(reference, candidate)
    assert (image.matched, image.missing, image.extra) == (2, [], [])
    assert image.worst_score == pytest.approx(0.05, abs=1e-6)
    assert image.worst_mask == pytest.approx(0.25)
    assert image.worst_iou == pytest.approx(60 / 60.3, abs=1e-6)


def test_each_image_of_a_batch_is_compared_alone() -> None:
    """The same box in image 0 and image 1 never pair across images; rows past num_detections are never read."""
    reference = answer([(SQUARE, 0.9, 1)], [], [([0, 0, 30, 30], 0.8, 2)])
    candidate = answer([], [(SQUARE, 0.9, 1)], [([0, 0, 30, 30], 0.8, 2)])
    first, second, third = compare_detections(reference, candidate)
    assert (first.matched, first.missing, first.extra) == (0, [0], [])
    assert (second.matched, second.missing, second.extra) == (0, [], [0])
    assert (third.matched, third.missing, third.extra) == (1, [], [])


# --- compare_image and mask_iou, answers known by construction ---------------------------------------------------


def square_mask(top: int, left: int, side: int = 10, size: int = 40) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top : top + side, left : left + side] = True
    return mask


def found(rows: list[tuple[Sequence[float], float, int, np.ndarray]]) -> Found:
    return Found(
        boxes=np.array([box for box, *_ in rows], np.float32).reshape(-1, 4),
        scores=np.array([score for _, score, *_ in rows], np.float32),
        classes=np.array([label for *_, label, _ in rows], np.int64),
        masks=np.array([mask for *_, mask in rows], bool).reshape(-1, 40, 40),
    )


def test_mask_iou_of_masks_off_by_a_pixel() -> None:
    square = square_mask(5, 5)
    grown = square.copy()
    grown[15, 5] = True
    assert mask_iou(square, square) == 1.0
    assert mask_iou(square, grown) == pytest.approx(100 / 101)
    assert mask_iou(square, square_mask(5, 6)) == pytest.approx(90 / 110)  # one column over
    assert mask_iou(square, square_mask(25, 25)) == 0.0
    empty = np.zeros((40, 40), bool)
    assert mask_iou(empty, empty) == 1.0 and mask_iou(empty, square) == 0.0


def test_compare_image_pairs_and_measures_what_was_built() -> None:
    """Reference: A (0.9, class 1), B (0.8, class 2), C (0.4, class 1). Candidate: A with its mask a column over and
    score 0.85, B exactly, C's box as class 2 (so C is missing, that one extra) and D (0.3) nobody has."""
    a, b, c, d = [5, 5, 15, 15], [20, 20, 30, 35], [0, 25, 12, 38], [30, 0, 39, 10]
    reference = found(
        [(a, 0.9, 1, square_mask(5, 5)), (b, 0.8, 2, square_mask(20, 20)), (c, 0.4, 1, square_mask(0, 25))]
    )
    candidate = found(
        [
            (b, 0.8, 2, square_mask(20, 20)),
            (c, 0.35, 2, square_mask(0, 25)),
            (a, 0.85, 1, square_mask(5, 6)),
            (d, 0.3, 1, square_mask(30, 0)),
        ]
    )
    agreement = compare_image(reference, candidate)
    assert (agreement.matched, agreement.missed, agreement.extra) == (2, 1, 2)
    assert agreement.pairs == ((0, 2), (1, 0))
    assert agreement.box_ious == (1.0, 1.0)
    assert agreement.mask_ious == pytest.approx((90 / 110, 1.0))
    assert agreement.score_differences == pytest.approx((0.05, 0.0), abs=1e-6)
    expected = 0.4 + (0.35 + 0.3) + (1 - 90 / 110) * 0.9 + 0.0 * 0.8  # missing, extra, pairs' mask disagreement
    assert agreement.disagreement == pytest.approx(expected, abs=1e-6)


def test_compare_image_matches_at_coco_s_loosest_iou_by_default() -> None:
    assert MATCH_IOU == 0.5
    reference = found([([0, 0, 10, 10], 0.9, 1, square_mask(0, 0))])
    half, less = found([([0, 0, 10, 5], 0.9, 1, square_mask(0, 0))]), found([([0, 0, 10, 4.99], 0.9, 1, square_mask(0, 0))])
    assert compare_image(reference, half).matched == 1
    assert (compare_image(reference, less).matched, compare_image(reference, less).missed) == (0, 1)
    nothing = found([])
    agreement = compare_image(nothing, nothing)
    assert (agreement.matched, agreement.missed, agreement.extra, agreement.disagreement) == (0, 0, 0, 0.0)


# --- against pycocotools on random detections ----------------------------------------------------------------


def xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def coco_box_ious(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    ious = coco_mask.iou(xywh(first), xywh(second), [0] * len(second))
    return np.asarray(ious, np.float64).reshape(len(first), len(second))


def random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    corner = rng.uniform(0, 150, (count, 2))
    return np.concatenate([corner, corner + rng.uniform(4, 60, (count, 2))], axis=1).astype(np.float32)


def jittered(rng: np.random.Generator, boxes: np.ndarray, pixels: float) -> np.ndarray:
    moved = boxes + rng.uniform(-pixels, pixels, boxes.shape)
    moved[:, 2:] = np.maximum(moved[:, 2:], moved[:, :2] + 1)
    return moved.astype(np.float32)


def random_case(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A reference with some near-twin boxes (so that candidates are contested), and a candidate with jittered copies
    of most of its detections (some of another class), new boxes, in shuffled order; scores from a few values, so
    that some tie. Batch 1, 16 rows, masks random."""
    n = int(rng.integers(0, 9))
    boxes = random_boxes(rng, n)
    if n:
        twins = rng.random(n) < 0.3
        boxes[twins] = jittered(rng, boxes[rng.integers(0, n, n)][twins], 6)
    classes = rng.integers(1, 4, n)
    kept = rng.random(n) < 0.8
    copies = jittered(rng, boxes[kept], 8)
    copy_classes = np.where(rng.random(len(copies)) < 0.9, classes[kept], rng.integers(1, 4, len(copies)))
    new = int(rng.integers(0, 3))
    cand_boxes = np.concatenate([copies, random_boxes(rng, new)])
    cand_classes = np.concatenate([copy_classes, rng.integers(1, 4, new)])
    order = rng.permutation(len(cand_boxes))

    def pack(boxes: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
        count = len(boxes)
        out = {
            "num_detections": np.array([[count]], np.int32),
            "boxes": np.zeros((1, 16, 4), np.float32),
            "scores": np.zeros((1, 16), np.float32),
            "classes": np.zeros((1, 16), np.int32),
            "masks": np.zeros((1, 16, M, M), np.float32),
        }
        out["boxes"][0, :count] = boxes
        out["scores"][0, :count] = rng.choice([0.3, 0.55, 0.7, 0.9, 0.95], count)
        out["classes"][0, :count] = classes
        out["masks"][0, :count] = rng.random((count, M, M))
        return out

    return pack(boxes, classes), pack(cand_boxes[order], cand_classes[order])


def coco_matching(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], min_iou: float):
    """COCOeval's matching of image 0 at one IoU threshold, every category, areas and detection counts unlimited,
    with the reference as COCO's detections (matched greedily, highest score first) and the candidate as its ground
    truth: the (reference row, candidate row) pairs, the reference rows unmatched, the candidate rows unmatched."""
    n, m = int(reference["num_detections"][0, 0]), int(candidate["num_detections"][0, 0])
    categories = [{"id": c} for c in range(1, 4)]

    def coco(rows: int, answer: dict[str, np.ndarray], scored: bool) -> COCO:
        annotations = []
        for row, box in enumerate(xywh(answer["boxes"][0, :rows])):
            annotation = {
                "id": row + 1,
                "image_id": 1,
                "category_id": int(answer["classes"][0, row]),
                "bbox": box.tolist(),
                "area": float(box[2] * box[3]),
                "iscrowd": 0,
            }
            if scored:
                annotation["score"] = float(answer["scores"][0, row])
            annotations.append(annotation)
        dataset = COCO()
        dataset.dataset = {"images": [{"id": 1}], "categories": categories, "annotations": annotations}
        dataset.createIndex()
        return dataset

    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco(m, candidate, False), coco(n, reference, True), "bbox")
        evaluation.params.iouThrs = np.array([min_iou])
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0.0, 1e10]], ["all"]
        evaluation.params.maxDets = [1000]
        evaluation.evaluate()
    pairs, missing, extra = set(), set(range(n)), set(range(m))
    for image in filter(None, evaluation.evalImgs):
        for reference_id, candidate_id in zip(image["dtIds"], image["dtMatches"][0]):
            if candidate_id:
                pairs.add((reference_id - 1, int(candidate_id) - 1))
                missing.discard(reference_id - 1)
                extra.discard(int(candidate_id) - 1)
    return pairs, missing, extra


def same_class_ious(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> np.ndarray:
    """pycocotools' IoU of image 0's reference and candidate boxes, NaN where the classes differ."""
    n, m = int(reference["num_detections"][0, 0]), int(candidate["num_detections"][0, 0])
    ious = coco_box_ious(reference["boxes"][0, :n], candidate["boxes"][0, :m])
    return np.where(reference["classes"][0, :n, None] == candidate["classes"][0, None, :m], ious, np.nan)


def near_a_threshold_or_tied(ious: np.ndarray, min_iou: float) -> bool:
    """Whether a same-class IoU sits within 1e-4 of min_iou, or two candidates above it tie for one reference row:
    where float32 and float64 IoUs, or COCOeval's tie-break (the later row), could tell another story."""
    if (np.abs(ious - min_iou) < 1e-4).any():
        return True
    for row in ious:
        options = np.sort(row[row >= min_iou])
        if (np.diff(options) < 1e-5).any():
            return True
    return False


CASES = 150


@pytest.mark.parametrize("matcher", ["maskrt", "tests"])
def test_pairing_is_coco_s_greedy_matching(matcher: str) -> None:
    """150 random images at IoU thresholds 0.3, 0.5 and 0.75: pairs, missing and extra rows as COCOeval finds them;
    each pair's IoU is pycocotools'; the worst IoU, score and M×M mask differences those of COCOeval's pairs. For
    maskrt.check.compare (pair_detections, compare_detections) and for the tests' own matching (tests/matching.py)."""
    rng = np.random.default_rng(15)
    seen = {"pairs": 0, "missing": 0, "extra": 0, "contested": 0}
    checked = 0
    while checked < CASES:
        reference, candidate = random_case(rng)
        min_iou = float(rng.choice([0.3, 0.5, 0.75]))
        ious_by_class = same_class_ious(reference, candidate)
        if near_a_threshold_or_tied(ious_by_class, min_iou):
            continue
        checked += 1
        pairs, missing, extra = coco_matching(reference, candidate, min_iou)
        if matcher == "maskrt":
            got_pairs, got_missing, got_extra = pairs_of(reference, candidate, 0, min_iou)
            ious = {(i, j): iou for i, j, iou in got_pairs}
            (image,) = compare_detections(reference, candidate, min_iou=min_iou)
        else:
            n, m = int(reference["num_detections"][0, 0]), int(candidate["num_detections"][0, 0])
            rows = pair_rows(
                reference["boxes"][0, :n], reference["scores"][0, :n], reference["classes"][0, :n],
                candidate["boxes"][0, :m], candidate["classes"][0, :m], min_iou,
            )  # fmt: skip
            got_missing, got_extra, ious = rows.missing, rows.extra, dict(zip(rows.pairs, rows.ious))
            (image,) = match_detections(reference, candidate, min_iou=min_iou)
        assert (set(ious), set(got_missing), set(got_extra)) == (pairs, missing, extra), f"case {checked}"
        assert (image.matched, sorted(image.missing), sorted(image.extra)) == (len(pairs), sorted(missing), sorted(extra))
        coco_ious = coco_box_ious(reference["boxes"][0], candidate["boxes"][0])
        for (i, j), iou in ious.items():
            assert iou == pytest.approx(coco_ious[i, j], abs=1e-6)
        assert image.worst_iou == pytest.approx(min((coco_ious[i, j] for i, j in pairs), default=1.0), abs=1e-6)
        scores = [abs(float(reference["scores"][0, i]) - float(candidate["scores"][0, j])) for i, j in pairs]
        masks = [np.abs(reference["masks"][0, i] - candidate["masks"][0, j]).max() for i, j in pairs]
        assert image.worst_score == pytest.approx(max(scores, default=0.0), abs=1e-6)
        assert image.worst_mask == pytest.approx(max(masks, default=0.0), abs=1e-6)
        seen["pairs"] += len(pairs)
        seen["missing"] += len(missing)
        seen["extra"] += len(extra)
        seen["contested"] += int((ious_by_class >= min_iou).sum(0).max(initial=0) > 1)  # a candidate two could claim
    assert min(seen.values()) >= 10, f"the random cases should exercise every outcome: {seen}"


def test_box_iou_is_pycocotools_on_random_boxes() -> None:
    """With no threshold (min_iou 0) every reference box pairs with a same-class candidate: each pair's IoU is
    pycocotools' IoU of the xywh boxes, to float32 precision."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        reference, candidate = random_boxes(rng, 12), random_boxes(rng, 12)
        pairs, _, _ = pair_detections(reference, rng.random(12), np.ones(12), candidate, np.ones(12), 0.0)
        assert len(pairs) == 12
        expected = coco_box_ious(reference, candidate)
        for i, j, iou in pairs:
            assert iou == pytest.approx(expected[i, j], abs=1e-6)


def test_mask_iou_is_pycocotools_on_rle_masks() -> None:
    """Random blobs, off by random pixels, encoded as COCO RLE: mask_iou and compare_image's mask IoUs are
    pycocotools' RLE IoU."""
    rng = np.random.default_rng(8)
    for _ in range(30):
        size = tuple(int(s) for s in rng.integers(8, 64, 2))
        first = rng.random(size) < rng.uniform(0.05, 0.9)
        second = first ^ (rng.random(size) < rng.uniform(0.0, 0.2))
        rles = coco_mask.encode(np.asfortranarray(np.stack([first, second], axis=-1).astype(np.uint8)))
        expected = float(coco_mask.iou([rles[0]], [rles[1]], [0])[0, 0])
        assert mask_iou(first, second) == pytest.approx(expected, abs=1e-12)
        assert mask_iou(second, first) == pytest.approx(expected, abs=1e-12)
    masks = (rng.random((5, 40, 40)) < 0.4).astype(bool)
    others = masks ^ (rng.random((5, 40, 40)) < 0.1)
    boxes = random_boxes(rng, 5)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
    agreement = compare_image(Found(boxes, scores, np.ones(5), masks), Found(boxes, scores, np.ones(5), others))
    assert agreement.pairs == tuple((i, i) for i in range(5))
    encoded = [coco_mask.encode(np.asfortranarray(m.astype(np.uint8))) for m in (*masks, *others)]
    ious = [float(coco_mask.iou([encoded[i]], [encoded[5 + j]], [0])[0, 0]) for i, j in agreement.pairs]
    assert agreement.matched == 5 and agreement.mask_ious == pytest.approx(ious, abs=1e-12)
