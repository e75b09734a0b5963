"""The tests' own PyTorch side of every comparison, from torch and torchvision alone (not maskrt.check): what a
torchvision Mask R-CNN answers on letterboxed images, in the deploy graph's output format.

The model runs as a user runs it, model(list of images), with its transform set not to resize the input, and a
forward hook on its RoIHeads keeps their detections before the transform's postprocess pastes the masks: boxes in
input pixels, scores, labels and the M×M mask probabilities of each detection's class, as the deploy graph outputs.
"""

from __future__ import annotations

import numpy as np
import torch


def keep_input_size(model: torch.nn.Module, height: int, width: int) -> None:
    """Sets a torchvision detection model's transform not to resize an H×W input (scale min(min_size / short side,
    max_size / long side) = 1), as the deploy graph does not."""
    model.transform.min_size = (min(height, width),)
    model.transform.max_size = max(height, width)


def roi_heads_detections(model: torch.nn.Module, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """model(images) (eval mode, each [3,h,w] RGB 0..1, all of one size), not resized: RoIHeads' detections of each
    image, masks [N,1,M,M] before they are pasted."""
    transform = model.transform
    settings = (transform.min_size, transform.max_size)
    caught: list[dict[str, torch.Tensor]] = []

    def catch(module: torch.nn.Module, inputs: object, output: tuple[list[dict[str, torch.Tensor]], object]) -> None:
        caught.extend(dict(found) for found in output[0])  # postprocess replaces the dicts' masks; keep ours

    hook = model.roi_heads.register_forward_hook(catch)
    try:
        keep_input_size(model, images[0].shape[-2], images[0].shape[-1])
        with torch.no_grad():
            model(images)
    finally:
        hook.remove()
        transform.min_size, transform.max_size = settings
    return caught


def reference_outputs(
    model: torch.nn.Module, images: np.ndarray, image_sizes: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The torchvision model's answer on letterboxed images [B,3,H,W] (RGB 0..255) in the deploy graph's format:
    num_detections [B,1] int32, boxes [B,K,4], scores [B,K], classes [B,K] int32, masks [B,K,M,M], K the model's
    detections per image, rows past num_detections zero.

    Without `image_sizes` the images run as one batch, each the whole H×W canvas (a --single-input graph). With
    them ([B,2] (h, w) inside the letterbox, as the deploy graph's image_sizes input) each image runs alone at its own
    size: the canvas' top-left h×w, the padding cut off.
    """
    batch = len(images)
    tensors = [torch.tensor(image, dtype=torch.float32) / 255 for image in images]
    if image_sizes is None:
        found = roi_heads_detections(model, tensors)
    else:
        sizes = [(int(h), int(w)) for h, w in image_sizes]
        found = [roi_heads_detections(model, [t[:, :h, :w]])[0] for t, (h, w) in zip(tensors, sizes)]
    k = model.roi_heads.detections_per_img
    m = found[0]["masks"].shape[-1]  # the mask predictor's M, there even with no detections
    out = {
        "num_detections": np.zeros((batch, 1), np.int32),
        "boxes": np.zeros((batch, k, 4), np.float32),
        "scores": np.zeros((batch, k), np.float32),
        "classes": np.zeros((batch, k), np.int32),
        "masks": np.zeros((batch, k, m, m), np.float32),
    }
    for b, detections in enumerate(found):
        n = len(detections["scores"])
        out["num_detections"][b, 0] = n
        out["boxes"][b, :n] = detections["boxes"].numpy()
        out["scores"][b, :n] = detections["scores"].numpy()
        out["classes"][b, :n] = detections["labels"].numpy()
        out["masks"][b, :n] = detections["masks"][:, 0].numpy()
    return out
