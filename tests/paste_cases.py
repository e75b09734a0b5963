"""Mask pasting cases and torchvision's paste_masks_in_image as their oracle (CPU harness and GPU tests)."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image


def paste_case(count: int, image_size: tuple[int, int], seed: int, mask_size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """masks [count,M,M] float32 sigmoid probabilities with smooth blobs (as a mask head gives) and boxes [count,4] in
    image pixels, clipped to the image as Mask R-CNN's are: large, small, touching every edge, the whole image,
    sub-pixel and zero-sized. (torchvision's own paste wraps around for a box wholly left of or above the image.)"""
    generator = torch.Generator().manual_seed(seed)
    height, width = image_size
    coarse = torch.randn(count, 1, 7, 7, generator=generator) * 4
    masks = torch.sigmoid(torch.nn.functional.interpolate(coarse, size=(mask_size, mask_size), mode="bilinear"))[:, 0]
    extent = torch.tensor([width, height], dtype=torch.float32)
    corner = torch.rand(count, 2, generator=generator) * 1.2 * extent - 0.2 * extent
    size = torch.rand(count, 2, generator=generator) ** 2 * 0.7 * extent
    boxes = torch.cat([corner, corner + size], dim=1)
    boxes = torch.minimum(boxes.clamp(min=0), extent.repeat(2))
    special = torch.tensor(
        [
            [0.0, 0.0, width, height],  # the whole image
            [0.0, 0.0, 15.75, 30.5],  # at the top-left corner
            [width - 12.5, height - 9.0, width, height],  # at the bottom-right corner
            [width - 0.3, 5.0, width, 40.0],  # a sliver at the right edge
            [10.2, 10.4, 10.6, 10.7],  # sub-pixel
            [20.0, 20.0, 20.0, 20.0],  # zero-sized
        ]
    )
    boxes[: min(count, len(special))] = special[: min(count, len(special))]
    return masks.numpy().astype(np.float32), boxes.numpy().astype(np.float32)


def torchvision_paste(masks: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int], device: str = "cpu") -> np.ndarray:
    """bool [N,h,w]: torchvision's paste_masks_in_image, then > 0.5, as its postprocess_detections thresholds it."""
    pasted = paste_masks_in_image(
        torch.from_numpy(masks)[:, None].to(device), torch.from_numpy(boxes).to(device), image_size
    )
    return (pasted[:, 0] > 0.5).cpu().numpy()


def mask_ious(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per-mask IoU; two empty masks agree (1.0)."""
    union = (got | want).reshape(len(got), -1).sum(1)
    intersection = (got & want).reshape(len(got), -1).sum(1)
    return np.where(union == 0, 1.0, intersection / np.maximum(union, 1))
