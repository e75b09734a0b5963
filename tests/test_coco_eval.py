"""COCO AP of detections, scored by pycocotools against ground truth whose right answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from maskrt.calib.shapes import write_dataset
from maskrt.check.coco_eval import coco_detections, evaluate


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("coco") / "val"
    write_dataset(output, count=6, seed=5, size=64)
    return output / "instances.json"


def _ground_truth_as_detections(instances: Path, shift: int = 0, label_offset: int = 0) -> list[dict[str, object]]:
    coco = COCO(str(instances))
    detections: list[dict[str, object]] = []
    for image_id in coco.getImgIds():
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        boxes = np.array([[x + shift, y, x + w + shift, y + h] for x, y, w, h in (a["bbox"] for a in annotations)])
        masks = np.stack([np.roll(coco.annToMask(a), shift, axis=1) for a in annotations]).astype(np.float32)
        labels = np.array([a["category_id"] + label_offset for a in annotations])
        detections += coco_detections(image_id, boxes, np.full(len(annotations), 0.9), labels, masks)
    return detections


def test_the_ground_truth_scores_full_ap(instances: Path) -> None:
    ap = evaluate(instances, _ground_truth_as_detections(instances))
    assert ap.box == pytest.approx(1.0) and ap.mask == pytest.approx(1.0)


def test_shifted_detections_score_less(instances: Path) -> None:
    ap = evaluate(instances, _ground_truth_as_detections(instances, shift=3))
    assert 0.0 < ap.box < 0.9 and 0.0 < ap.mask < 0.9


def test_wrong_classes_and_no_detections_score_zero(instances: Path) -> None:
    wrong = evaluate(instances, _ground_truth_as_detections(instances, label_offset=10))
    assert wrong.box == 0.0 and wrong.mask == 0.0
    nothing = evaluate(instances, [])
    assert nothing.box == 0.0 and nothing.mask == 0.0


def test_a_mask_is_the_pixels_above_one_half() -> None:
    probabilities = np.zeros((1, 8, 8), np.float32)
    probabilities[0, 2:5, 3:7] = 0.6
    probabilities[0, 6, 6] = 0.5
    [detection] = coco_detections(7, np.array([[3.0, 2.0, 7.0, 5.0]]), np.array([0.8]), np.array([2]), probabilities)
    assert detection["bbox"] == [3.0, 2.0, 4.0, 3.0]
    assert (detection["image_id"], detection["category_id"]) == (7, 2)
    decoded = coco_mask.decode(detection["segmentation"])
    np.testing.assert_array_equal(decoded, probabilities[0] > 0.5)


def test_a_file_that_is_not_coco_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "instances.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="instances.json: not a readable COCO instances json"):
        evaluate(broken, [])
