"""Inputs for the plugin kernels and torchvision's answers for them, shared by the CPU-harness and the GPU tests."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torchvision.ops import MultiScaleRoIAlign, batched_nms, roi_align
from torchvision.ops.poolers import LevelMapper

from maskrt.contracts.plugins import BatchedNMSAttrs, MultilevelRoIAlignAttrs


def fpn_features(
    attrs: MultilevelRoIAlignAttrs, batch: int, channels: int, image: tuple[int, int], generator: torch.Generator
) -> list[torch.Tensor]:
    """One [B,C,H/2^l,W/2^l] map per level, as an FPN gives them."""
    levels = range(attrs.min_level, attrs.max_level + 1)
    return [torch.randn(batch, channels, image[0] >> l, image[1] >> l, generator=generator) for l in levels]


def random_rois(batch: int, num_rois: int, image: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Boxes of every size from a few pixels to the whole image, some reaching past its edges."""
    height, width = image
    corner = torch.rand(batch, num_rois, 2, generator=generator) * torch.tensor([width, height]) - 20
    size = torch.exp(torch.rand(batch, num_rois, 2, generator=generator) * 6.5) + 0.5
    return torch.cat([corner, corner + size], dim=2)


def adversarial_rois(image: tuple[int, int]) -> torch.Tensor:
    """[1,R,4]: outside the image, zero-size, negative width or height, both negative, exactly on level boundaries."""
    height, width = image
    rois = [
        [-50.0, -40.0, -10.0, -5.0],  # wholly outside, top-left
        [width + 5.0, height + 5.0, width + 90.0, height + 60.0],  # wholly outside, bottom-right
        [-30.0, -30.0, width + 30.0, height + 30.0],  # larger than the image
        [10.0, 10.0, 10.0, 10.0],  # a point
        [12.0, 12.0, 12.0, 80.0],  # zero width
        [40.0, 30.0, 20.0, 90.0],  # negative width: negative area, no level in torchvision
        [40.0, 90.0, 100.0, 30.0],  # negative height
        [100.0, 90.0, 40.0, 30.0],  # both negative: positive area
        [0.0, 0.0, 224.0, 224.0],  # the canonical size
        [0.0, 0.0, 112.0, 112.0],  # exactly one level down
        [3.0, 5.0, 3.5, 5.25],  # under a pixel
        [width - 1.0, height - 1.0, width + 0.0, height + 0.0],  # the last pixel
    ]
    return torch.tensor([rois])


def torchvision_roi_align(
    attrs: MultilevelRoIAlignAttrs, rois: torch.Tensor, features: list[torch.Tensor], image: tuple[int, int]
) -> torch.Tensor:
    """[B,R,C,S,S]: MultiScaleRoIAlign for the stock settings, its LevelMapper + roi_align for the others."""
    batch, num_rois, _ = rois.shape
    boxes = list(rois)
    stock = attrs.aligned == 0 and attrs.eps == 1e-6 and attrs.num_levels > 1
    if stock:
        names = [f"p{level}" for level in range(attrs.min_level, attrs.max_level + 1)]
        pooler = MultiScaleRoIAlign(
            names, attrs.output_size, attrs.sampling_ratio, canonical_scale=int(attrs.canonical_scale),
            canonical_level=attrs.canonical_level,
        )
        pooled = pooler(OrderedDict(zip(names, features)), boxes, [image] * batch)
    else:
        batch_index = torch.arange(batch, dtype=rois.dtype, device=rois.device)[:, None, None].expand(batch, num_rois, 1)
        indexed = torch.cat([batch_index, rois], dim=2).reshape(-1, 5)
        if attrs.num_levels == 1:
            levels = torch.zeros(batch * num_rois, dtype=torch.int64, device=indexed.device)
        else:
            mapper = LevelMapper(attrs.min_level, attrs.max_level, int(attrs.canonical_scale), attrs.canonical_level, attrs.eps)
            levels = mapper(boxes)
        pooled = torch.zeros(batch * num_rois, features[0].shape[1], attrs.output_size, attrs.output_size, device=indexed.device)
        for index, feature in enumerate(features):
            chosen = torch.where(levels == index)[0]
            pooled[chosen] = roi_align(
                feature, indexed[chosen], attrs.output_size, 2.0 ** -(attrs.min_level + index), attrs.sampling_ratio,
                bool(attrs.aligned),
            )
    return pooled.reshape(batch, num_rois, *pooled.shape[1:])


def integer_boxes(shape: tuple[int, ...], generator: torch.Generator, extent: int = 600) -> torch.Tensor:
    """Boxes with integer corners: every IoU term is exact in float32, so any correct NMS agrees bit for bit."""
    corner = torch.randint(-20, extent, (*shape, 2), generator=generator)
    size = torch.randint(0, 160, (*shape, 2), generator=generator)
    return torch.cat([corner, corner + size], dim=-1).float()


NMS_CASES = ["rpn", "detection", "agnostic", "ties", "all-suppressed", "nothing-passes", "iou-at-threshold"]
BIG_NMS_CASES = ["rpn-full-size", "detection-full-size", "one-class-20000"]


def nms_case(name: str, device: str = "cpu") -> tuple[BatchedNMSAttrs, torch.Tensor, torch.Tensor]:
    """attrs, boxes and scores of a named case; the full-size ones are those of Mask R-CNN at 800x1344."""
    generator = torch.Generator().manual_seed(len(name))
    if name in ("rpn", "rpn-full-size"):  # proposals with their FPN level as class: each row scores in one level
        rows, k = (400, 150) if name == "rpn" else (4700, 1000)
        attrs = BatchedNMSAttrs(iou_threshold=0.7, score_threshold=0.0, max_output=k)
        boxes = integer_boxes((2, rows), generator, extent=1300)
        scores = torch.zeros(2, rows, 5)
        level = torch.randint(0, 5, (2, rows, 1), generator=generator)
        scores.scatter_(2, level, torch.rand(2, rows, 1, generator=generator) + 0.01)
    elif name in ("detection", "detection-full-size"):  # per-class boxes, background class 0
        rows, classes, k = (120, 9, 40) if name == "detection" else (1000, 91, 100)
        attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.05, max_output=k, background_class=0)
        boxes = integer_boxes((2 if k == 100 else 1, rows, classes), generator, extent=200 if k == 40 else 1300)
        scores = torch.rand(boxes.shape[:3], generator=generator) ** 3
    elif name == "one-class-20000":  # the largest supported N, sorted in the workspace
        attrs = BatchedNMSAttrs(iou_threshold=0.6, score_threshold=0.0, max_output=1000)
        boxes = integer_boxes((1, 20000), generator, extent=1300)
        scores = torch.rand(1, 20000, 1, generator=generator) + 0.01
    elif name == "agnostic":
        attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.1, max_output=500, class_agnostic=1)
        boxes = integer_boxes((2, 200), generator)
        scores = torch.rand(2, 200, 3, generator=generator)
    elif name == "ties":  # a few score values only, overlapping boxes: the order decides what is kept
        attrs = BatchedNMSAttrs(iou_threshold=0.3, score_threshold=0.0, max_output=60)
        boxes = integer_boxes((1, 150), generator, extent=150)
        scores = torch.randint(1, 4, (1, 150, 2), generator=generator).float() / 4
    elif name == "all-suppressed":  # one box repeated: one survivor per class
        attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.0, max_output=10)
        boxes = torch.tensor([10.0, 10.0, 50.0, 50.0]).repeat(1, 64, 1)
        scores = torch.rand(1, 64, 3, generator=generator) + 0.01
    elif name == "iou-at-threshold":  # IoU exactly 0.5 is kept, 0.6 is not; two equal points (IoU 0/0) are kept
        attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.0, max_output=8)
        boxes = torch.tensor([[[0.0, 0, 30, 10], [10, 0, 40, 10], [100, 100, 140, 110], [110, 100, 150, 110],
                               [200, 200, 200, 200], [200, 200, 200, 200]]])
        scores = torch.tensor([[[0.9], [0.8], [0.7], [0.6], [0.5], [0.4]]])
    elif name == "nothing-passes":
        attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.9, max_output=5)
        boxes = integer_boxes((2, 30), generator)
        scores = torch.rand(2, 30, 4, generator=generator) * 0.9
    else:
        raise KeyError(name)
    return attrs, boxes.to(device), scores.to(device)


def torchvision_nms(attrs: BatchedNMSAttrs, boxes: torch.Tensor, scores: torch.Tensor) -> list[torch.Tensor]:
    """Per image, the kept candidates as n * C + c in output order: batched_nms over the candidates, then [:K].

    Equal scores are ordered by candidate index, as the plugin contract says, by handing torchvision distinct ranks
    in place of the scores (NMS uses scores only to order)."""
    batch, num_boxes, num_classes = scores.shape
    kept = []
    for b in range(batch):
        flat = scores[b].reshape(-1)
        index = torch.arange(num_boxes * num_classes, device=scores.device)
        n, c = index // num_classes, index % num_classes
        candidate_boxes = boxes[b][n, c] if boxes.dim() == 4 else boxes[b][n]
        chosen = (flat > attrs.score_threshold) & (c != attrs.background_class)
        order = torch.sort(-flat[chosen].double(), stable=True).indices
        rank = torch.empty_like(order, dtype=torch.float32)
        rank[order] = -torch.arange(len(order), dtype=torch.float32, device=scores.device)
        groups = torch.zeros_like(c) if attrs.class_agnostic else c
        keep = batched_nms(candidate_boxes[chosen], rank, groups[chosen], attrs.iou_threshold)
        kept.append(index[chosen][keep][: attrs.max_output].cpu())
    return kept


def check_nms_outputs(
    attrs: BatchedNMSAttrs,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    outputs: tuple[torch.Tensor, ...],
) -> None:
    """The plugin's outputs against torchvision: the same kept candidates in the same order, their boxes, scores,
    classes and rows, then zero rows."""
    expected = torchvision_nms(attrs, boxes, scores)
    num, out_boxes, out_scores, out_classes, out_indices = (o.cpu() for o in outputs)
    boxes, scores = boxes.cpu(), scores.cpu()
    num_classes = scores.shape[2]
    for b, want in enumerate(expected):
        count = int(num[b, 0])
        got = out_indices[b, :count].long() * num_classes + out_classes[b, :count].long()
        assert got.tolist() == want.tolist(), f"image {b}: kept {got.tolist()[:20]}..., torchvision {want.tolist()[:20]}..."
        n, c = out_indices[b, :count].long(), out_classes[b, :count].long()
        assert torch.equal(out_scores[b, :count], scores[b, n, c])
        assert torch.equal(out_boxes[b, :count], boxes[b, n, c] if boxes.dim() == 4 else boxes[b, n])
        for tensor in (out_boxes, out_scores, out_classes, out_indices):
            assert not tensor[b, count:].any(), f"image {b}: rows past num_detections are not zero"
