"""A torchvision Mask R-CNN's answers in the deploy graph's output format, the PyTorch side of every comparison."""

from __future__ import annotations

import numpy as np
import torch


def keep_input_size(model: torch.nn.Module, height: int, width: int) -> None:
    """Sets a torchvision detection model's transform not to resize an H×W input, as the deploy graph does not."""
    model.transform.min_size = (min(height, width),)
    model.transform.max_size = max(height, width)


def deploy_outputs(model: torch.nn.Module, images: np.ndarray, image_sizes: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Runs `model` (eval mode) on letterboxed images [B,3,H,W] (RGB 0..255) as the deploy graph would see them.

    With `image_sizes` ([B,2] (h, w) of each image inside the letterbox, as the deploy graph's input), each image
    runs alone at its own size, the letterbox's padding cut off: what torchvision computes for that image after its
    resize. Without, the whole H×W canvas is the image (a --single-input graph). The transform is set not to resize,
    and the masks are read before paste_masks_in_image: M×M probabilities of each detection's class, as the deploy
    graph's `masks` output. Rows past num_detections are zero.
    """
    batch, _, height, width = images.shape
    k = model.roi_heads.detections_per_img
    tensors = [torch.from_numpy(np.ascontiguousarray(image, np.float32)) / 255 for image in images]
    if image_sizes is None:
        detections = _detect(model, tensors, height, width)
    else:
        sizes = [(int(h), int(w)) for h, w in image_sizes]
        detections = [_detect(model, [t[:, :h, :w]], h, w)[0] for t, (h, w) in zip(tensors, sizes)]
    mask_size = _mask_size(model)
    out = {
        "num_detections": np.zeros((batch, 1), np.int32),
        "boxes": np.zeros((batch, k, 4), np.float32),
        "scores": np.zeros((batch, k), np.float32),
        "classes": np.zeros((batch, k), np.int32),
        "masks": np.zeros((batch, k, mask_size, mask_size), np.float32),
    }
    for b, found in enumerate(detections):
        n = len(found["boxes"])
        out["num_detections"][b, 0] = n
        out["boxes"][b, :n] = found["boxes"].numpy()
        out["scores"][b, :n] = found["scores"].numpy()
        out["classes"][b, :n] = found["labels"].numpy()
        out["masks"][b, :n] = found["masks"][:, 0].numpy()
    return out


def _detect(model: torch.nn.Module, tensors: list[torch.Tensor], height: int, width: int) -> list[dict[str, torch.Tensor]]:
    """RoIHeads' detections for images of height x width, before the transform's postprocess."""
    keep_input_size(model, height, width)
    with torch.no_grad():
        batched, _ = model.transform(tensors)
        features = model.backbone(batched.tensors)
        proposals, _ = model.rpn(batched, features)
        detections, _ = model.roi_heads(features, proposals, batched.image_sizes)
    return detections


def _mask_size(model: torch.nn.Module) -> int:
    """M: what the mask head and predictor make of one pooled RoI."""
    heads = model.roi_heads
    pooled = heads.mask_roi_pool.output_size[0]
    with torch.no_grad():
        logits = heads.mask_predictor(heads.mask_head(torch.zeros(1, model.backbone.out_channels, pooled, pooled)))
    return int(logits.shape[-1])
