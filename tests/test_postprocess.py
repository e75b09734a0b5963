"""Mask pasting against torchvision's paste_masks_in_image, and boxes mapped back as its resize_boxes maps them."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import resize_boxes

from maskrt.runtime.postprocess import paste_masks
from maskrt.runtime.preprocess import letterbox_geometry


def mask_head_like(count: int, size: int, seed: int) -> np.ndarray:
    """Smooth [N,M,M] probabilities with edges at every angle, as a mask head gives."""
    coarse = np.random.default_rng(seed).normal(0, 4, (count, 6, 6)).astype(np.float32)
    logits = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in coarse])
    return (1 / (1 + np.exp(-logits))).astype(np.float32)


def detector_boxes(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Boxes of 2 to 600 pixels with fractional corners, clipped to the image as a detector's are, so that many
    touch its edges."""
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(-40, width - 10, count), rng.uniform(-40, height - 10, count)
    sides = np.exp(rng.uniform(np.log(2), np.log(600), (2, count)))
    boxes = np.stack([x1, y1, x1 + sides[0], y1 + sides[1]], axis=1)
    return np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)


def mask_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    union = (a | b).sum((1, 2))
    return np.where(union > 0, (a & b).sum((1, 2)) / np.maximum(union, 1), 1.0)


def test_100_masks_on_an_800x1344_image_equal_torchvision_s() -> None:
    height, width = 800, 1344
    masks, boxes = mask_head_like(100, 28, seed=0), detector_boxes(100, height, width, seed=1)
    theirs = paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes), (height, width))[:, 0] > 0.5
    ours = paste_masks(masks, boxes, (height, width))
    assert ours.shape == (100, height, width) and ours.dtype == bool
    assert mask_ious(ours, theirs.numpy()).min() >= 0.999
    assert theirs.numpy().any((1, 2)).sum() >= 90, "the case should paste masks, not empty images"


def test_other_mask_sizes_thresholds_and_tiny_boxes() -> None:
    masks, boxes = mask_head_like(40, 14, seed=2), detector_boxes(40, 97, 131, seed=3)
    boxes[:5, 2:] = boxes[:5, :2] + 0.3  # boxes under a pixel wide and tall, which torchvision widens to one
    theirs = paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes), (97, 131))[:, 0] > 0.3
    assert mask_ious(paste_masks(masks, boxes, (97, 131), threshold=0.3), theirs.numpy()).min() >= 0.999


def test_no_detections_paste_nothing() -> None:
    assert paste_masks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), (48, 64)).shape == (0, 48, 64)


def test_boxes_map_back_as_resize_boxes_maps_them() -> None:
    boxes = detector_boxes(50, 480, 640, seed=4)
    box = letterbox_geometry((480, 640), (800, 1344))
    expected = resize_boxes(torch.from_numpy(boxes), list(box.resized), list(box.original)).numpy()
    assert np.array_equal(box.to_original(boxes), expected)
