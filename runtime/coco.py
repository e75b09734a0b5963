"""COCO instance format: masks as COCO RLE, shared by the datasets, the runtime's results files and the evaluation."""

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
