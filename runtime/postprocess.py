"""Masks from M×M probabilities to the original image, as torchvision's paste_masks_in_image pastes them.

NumPy only, and only the pixels each box covers: torchvision resizes every mask to its box, writes it into a float
image of its own, and stacks them; here each mask's pasted rows are computed once, thresholded at once, and
written into one boolean array.
"""

from __future__ import annotations

import numpy as np

from maskrt.contracts.errors import BadInput
from maskrt.runtime.preprocess import linear_indices

F32 = np.float32
PADDING = 1  # paste_masks_in_image's one-pixel border of zeros around each mask


def paste_masks(
    masks: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int], threshold: float = 0.5
) -> np.ndarray:
    """[N,M,M] probabilities and [N,4] boxes (x1,y1,x2,y2, original pixels) → bool [N,h,w], the masks that
    torchvision's paste_masks_in_image(masks[:, None], boxes, image_size) gives, then > threshold.

    torchvision's steps, in float32 where it works in float32: the mask padded by one pixel of zeros, the box widened
    by (M + 2) / M about its centre and truncated to integers, the padded mask resized bilinearly
    (align_corners=False) to the box's w x h pixels, and the part inside the image pasted at the box.
    """
    masks = np.asarray(masks, F32)
    boxes = np.asarray(boxes, F32).reshape(-1, 4)
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2] or len(masks) != len(boxes):
        raise BadInput(f"expected masks [N,M,M] and boxes [N,4], got {list(masks.shape)} and {list(boxes.shape)}")
    height, width = image_size
    pasted = np.zeros((len(masks), height, width), bool)
    if not len(masks):
        return pasted
    size = masks.shape[-1]
    padded = np.pad(masks, ((0, 0), (PADDING, PADDING), (PADDING, PADDING)))
    for index, (mask, box) in enumerate(zip(padded, _expand_boxes(boxes, float(size + 2 * PADDING) / size))):
        x1, y1, x2, y2 = (int(v) for v in box)
        box_w, box_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        # The paste's rows and columns, in the image and in the resized mask, as paste_mask_in_image slices them.
        target_rows = slice(max(y1, 0), min(y2 + 1, height))
        target_cols = slice(max(x1, 0), min(x2 + 1, width))
        if target_rows.stop <= target_rows.start or target_cols.stop <= target_cols.start:
            continue  # the box lies outside the image
        rows = range(*slice(target_rows.start - y1, target_rows.stop - y1).indices(box_h))
        cols = range(*slice(target_cols.start - x1, target_cols.stop - x1).indices(box_w))
        pasted[index, target_rows, target_cols] = _resized(mask, box_h, box_w, rows, cols) > F32(threshold)
    return pasted


def _expand_boxes(boxes: np.ndarray, scale: float) -> np.ndarray:
    """expand_boxes, then .to(int64): each box widened by `scale` about its centre, truncated toward zero."""
    half_w = (boxes[:, 2] - boxes[:, 0]) * F32(0.5) * F32(scale)
    half_h = (boxes[:, 3] - boxes[:, 1]) * F32(0.5) * F32(scale)
    centre_x = (boxes[:, 2] + boxes[:, 0]) * F32(0.5)
    centre_y = (boxes[:, 3] + boxes[:, 1]) * F32(0.5)
    expanded = np.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], axis=1)
    truncated: np.ndarray = np.trunc(expanded).astype(np.int64)
    return truncated


def _resized(mask: np.ndarray, height: int, width: int, rows: range, cols: range) -> np.ndarray:
    """Rows `rows` and columns `cols` of interpolate(mask, (height, width), "bilinear", align_corners=False).

    PyTorch blends each row's two columns first, then the two rows: t = a * w0 + b * w1 per source row, then
    t_low * h0 + t_high * h1, in float32. Blending the columns of every source row once gives the same numbers.
    """
    low_y, high_y, weight_low_y, weight_high_y = linear_indices(mask.shape[0], height, rows)
    low_x, high_x, weight_low_x, weight_high_x = linear_indices(mask.shape[1], width, cols)
    across = mask[:, low_x] * weight_low_x + mask[:, high_x] * weight_high_x  # [M + 2, len(cols)]
    resized: np.ndarray = across[low_y] * weight_low_y[:, None] + across[high_y] * weight_high_y[:, None]
    return resized
