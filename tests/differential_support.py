"""Seeded random Mask R-CNN configurations, and a detection-by-detection judge, for the differential test of surgery.

Each configuration is a small torchvision MaskRCNN (a few strided convolutions under torchvision's
FeaturePyramidNetwork) drawn from a seed: which stages the FPN reads (two maps of one stride among them), a pool level or not, anchors per
level (the same at every level or not), which maps each head pools and how, input size, thresholds, top-n values,
and images with objects at the edges and corners. Random weights are made to detect as in detection_support: the
BatchNorm statistics are set from the images, the box regressors scaled down, the objectness spread out, and the
classifier rescaled so that a few proposals per detected class score well above the threshold.

The judge compares two answers detection by detection (same class, box IoU, score, pasted mask), so that the deploy
graph can be held to the plain export within what the export itself differs from PyTorch by.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign, box_iou
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from detection_support import calibrate_batchnorm

ASPECT_RATIOS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 10.0)  # the extremes make slivers that clipping leaves at the edges
ANCHORS_PER_LOCATION = (1, 2, 3, 4, 6)
SIZE_DIVISIBLE = 32
MAX_SIDE = 160
# A head that pools a map of fewer cells a side than this gets near-equal features for many RoIs, whose scores then
# tie to float rounding and leave NMS's choice to it (measured: a 2x2 pool level at 64x64 gave two detections whose
# scores differed by 4e-7 and swapped places between two correct graphs).
MIN_POOLED_CELLS = 4
# The detected classes' logits over the images' proposals are spread with this standard deviation; the
# LIKELY_PROPOSALS-th best of each image lies CLASS_LOGIT_MARGIN above background (a score of 0.62 or more).
CLASS_LOGIT_STD = 3.0
LIKELY_PROPOSALS = 5
CLASS_LOGIT_MARGIN = 0.5
# Scores closer than this tie to float32 rounding (a few units in the last place of a score near 1).
TIED_SCORES = 1e-6
MAX_DRAWS = 10
# Image sides that a plain export does not resize. The TorchScript exporter writes the transform's scale,
# min_size / side, as side's Reciprocal times min_size, which is 1 - 2^-24 for some sides (83, 97, 110, ...): the
# export then resizes the image one pixel smaller, which surgery refuses.
_SIDES = np.arange(64, MAX_SIDE + 1, dtype=np.float32)
UNRESIZED_SIDES = _SIDES[np.float32(1) / _SIDES * _SIDES == 1].astype(int)


@dataclass(frozen=True)
class Pooling:
    """One head's MultiScaleRoIAlign."""

    maps: tuple[str, ...]
    output_size: int
    sampling_ratio: int
    canonical_scale: int
    canonical_level: int


@dataclass(frozen=True)
class Configuration:
    """One drawn model, its images and its settings."""

    seed: int
    image_size: tuple[int, int]
    batch: int
    stage_strides: tuple[int, ...]  # each backbone stage's stride
    returned_stages: tuple[int, ...]  # the stages whose outputs become FPN maps "0", "1", ...
    pool_level: bool  # FPN's LastLevelMaxPool adds map "pool"
    channels: int
    anchor_sizes: tuple[tuple[int, ...], ...]  # per RPN level
    aspect_ratios: tuple[tuple[float, ...], ...]
    box_pooling: Pooling
    mask_pooling: Pooling
    num_classes: int
    rpn_pre_nms_top_n: int
    rpn_post_nms_top_n: int
    rpn_nms_thresh: float
    rpn_score_thresh: float
    box_score_thresh: float
    box_nms_thresh: float
    detections_per_img: int
    regression_scale: float  # what both box regressors are scaled by: larger moves boxes further from anchors

    @property
    def map_strides(self) -> dict[str, int]:
        """Each FPN map's stride, by name, in the FPN's order."""
        strides = np.cumprod(self.stage_strides)
        named = {str(i): int(strides[stage]) for i, stage in enumerate(self.returned_stages)}
        if self.pool_level:
            named["pool"] = 2 * named[str(len(self.returned_stages) - 1)]
        return named


def detecting_configuration(index: int, count: int) -> tuple[Configuration, MaskRCNN, np.ndarray]:
    """The index-th of `count` configurations, its model made to detect, and its images: the first of the draws from
    seeds index, index + count, index + 2 * count, ... whose model detects something, and whose detections of an
    image never tie in score (within TIED_SCORES). Tied scores come from RoIs that pool the very same features (a
    coarse map, adaptive sampling of a few cells); which of them NMS and the detection cap keep is then float32
    rounding's choice, which two correct graphs make differently (measured: two boxes at 0.6222466 swapped places)."""
    for seed in range(index, index + MAX_DRAWS * count, count):
        configuration = draw_configuration(seed)
        model, images = build_model(configuration), scene_images(configuration)
        make_detecting(model, images, configuration)
        found = pytorch_detections(model, images)
        gaps = [np.diff(np.sort(image.scores)) for image in found]
        if any(len(image.scores) for image in found) and not any((gap < TIED_SCORES).any() for gap in gaps):
            return configuration, model, images
    raise AssertionError(f"no configuration of the {MAX_DRAWS} drawn for {index} detects with distinct scores")


def draw_configuration(seed: int) -> Configuration:
    rng = np.random.default_rng(seed)
    stage_strides, returned = _draw_backbone(rng)
    pool_level = bool(rng.random() < 0.5)
    strides = np.cumprod(stage_strides)
    map_strides = [int(strides[s]) for s in returned] + ([2 * int(strides[returned[-1]])] if pool_level else [])
    names = [str(i) for i in range(len(returned))] + (["pool"] if pool_level else [])
    per_location = int(rng.choice(ANCHORS_PER_LOCATION))
    if rng.random() < 0.4:  # every level the same anchors, as torchvision's MobileNetV3 recipe
        shapes = [_draw_anchor_shapes(rng, per_location)] * len(map_strides)
    else:
        shapes = [_draw_anchor_shapes(rng, per_location, stride) for stride in map_strides]
    sizes, ratios = zip(*shapes)
    box_pooling = _draw_pooling(rng, names, map_strides, (2, 7))
    mask_pooling = _draw_pooling(rng, names, map_strides, (3, 14))
    pooled_stride = max(map_strides[names.index(name)] for name in box_pooling.maps + mask_pooling.maps)
    sides = UNRESIZED_SIDES[UNRESIZED_SIDES >= MIN_POOLED_CELLS * pooled_stride]
    return Configuration(
        seed=seed,
        image_size=(_draw_side(rng, sides), _draw_side(rng, sides)),
        batch=int(rng.choice([1, 1, 2])),
        stage_strides=stage_strides,
        returned_stages=returned,
        pool_level=pool_level,
        channels=int(rng.choice([4, 8])),
        anchor_sizes=tuple(sizes),
        aspect_ratios=tuple(ratios),
        box_pooling=box_pooling,
        mask_pooling=mask_pooling,
        num_classes=int(rng.integers(2, 6)),
        rpn_pre_nms_top_n=int(rng.choice([30, 100, 300, 1000])),
        rpn_post_nms_top_n=int(rng.choice([20, 60, 200, 1000])),
        rpn_nms_thresh=float(rng.choice([0.5, 0.6, 0.7, 0.8])),
        rpn_score_thresh=float(rng.choice([0.0, 0.0, 0.05, 0.3])),
        box_score_thresh=float(rng.choice([0.05, 0.3, 0.5])),
        box_nms_thresh=float(rng.choice([0.3, 0.5, 0.7])),
        detections_per_img=int(rng.choice([5, 20, 100])),
        regression_scale=float(rng.choice([0.05, 0.1, 0.2])),
    )


def _draw_side(rng: np.random.Generator, sides: np.ndarray) -> int:
    """A third of the time a multiple of size_divisible (the image's far edges are the maps' far edges), a third of the
    time just past one (padding adds most of a stride; past 64, more than half an octave, which makes torchvision
    pool each map at twice its stride's scale), else any side."""
    kind = rng.integers(3)
    if kind == 0:
        sides = sides[sides % SIZE_DIVISIBLE == 0]
    elif kind == 1:
        sides = sides[(sides % SIZE_DIVISIBLE > 0) & (sides % SIZE_DIVISIBLE <= 4)]
    return int(rng.choice(sides))


def _draw_backbone(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Stage strides (a stride-2 stem, then 1 or 2 each, 32 at most in all) and the 1 to 3 stages the FPN reads;
    a third of the time the last two stages, of one stride, as MobileNetV3's."""
    while True:
        strides = (2, *(int(s) for s in rng.choice([1, 2, 2], size=int(rng.integers(3, 6)))))
        if np.prod(strides) > SIZE_DIVISIBLE:
            continue
        if rng.random() < 1 / 3:
            strides = (*strides[:-1], 1)
            return strides, (len(strides) - 2, len(strides) - 1)
        count = min(int(rng.integers(1, 4)), len(strides) - 1)
        return strides, tuple(sorted(int(s) for s in rng.choice(np.arange(1, len(strides)), size=count, replace=False)))


def _draw_anchor_shapes(rng: np.random.Generator, per_location: int, stride: int = 8) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Sizes and aspect ratios whose product is `per_location`, around the level's stride."""
    size_count = int(rng.choice([d for d in range(1, per_location + 1) if per_location % d == 0]))
    sizes = tuple(sorted({int(stride * 2 ** rng.uniform(0.5, 3.5)) for _ in range(size_count * 4)})[:size_count])
    if len(sizes) < size_count:
        sizes = tuple(stride * 2 ** k for k in range(1, size_count + 1))
    ratios = tuple(float(r) for r in sorted(rng.choice(ASPECT_RATIOS, size=per_location // size_count, replace=False)))
    return sizes, ratios


def _draw_pooling(rng: np.random.Generator, names: list[str], strides: list[int], sizes: tuple[int, int]) -> Pooling:
    """Maps torchvision's MultiScaleRoIAlign can pool: one map, a run whose strides double, or two of one stride
    (LevelMapper then has one level, the first map's); none so coarse that the largest image has fewer than
    MIN_POOLED_CELLS of it a side."""
    poolable = [i for i, stride in enumerate(strides) if MIN_POOLED_CELLS * stride <= MAX_SIDE]
    runs = [[i] for i in poolable]
    for start in poolable:
        end = start + 1
        while end in poolable and strides[end] == 2 * strides[end - 1]:
            end += 1
            runs.append(list(range(start, end)))
        if start + 1 in poolable and strides[start + 1] == strides[start]:
            runs.append([start, start + 1])
    chosen = runs[int(rng.integers(len(runs)))]
    return Pooling(
        maps=tuple(names[i] for i in chosen),
        output_size=int(rng.integers(sizes[0], sizes[1] + 1)),
        sampling_ratio=int(rng.choice([0, 1, 2, 2, 3])),
        canonical_scale=int(rng.choice([16, 32, 64, 224])),
        canonical_level=int(rng.integers(2, 6)),
    )


class StagesWithFPN(nn.Module):
    """Strided convolution stages, of which some feed torchvision's FeaturePyramidNetwork (torchvision's
    BackboneWithFPN always adds the pool level)."""

    def __init__(self, configuration: Configuration):
        super().__init__()
        channels, stages, in_channels = configuration.channels, OrderedDict(), 3
        for index, stride in enumerate(configuration.stage_strides):
            width = channels * (index + 1)
            stages[f"stage{index}"] = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride, 1), nn.BatchNorm2d(width), nn.ReLU())
            in_channels = width
        returned = {f"stage{s}": str(i) for i, s in enumerate(configuration.returned_stages)}
        self.body = IntermediateLayerGetter(nn.Sequential(stages), returned)
        self.fpn = FeaturePyramidNetwork(
            [channels * (s + 1) for s in configuration.returned_stages],
            channels,
            LastLevelMaxPool() if configuration.pool_level else None,
        )
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn(self.body(images))


def build_model(configuration: Configuration) -> MaskRCNN:
    torch.manual_seed(configuration.seed)
    channels = configuration.channels
    per_location = len(configuration.anchor_sizes[0]) * len(configuration.aspect_ratios[0])
    box, mask = configuration.box_pooling, configuration.mask_pooling
    height, width = configuration.image_size
    model = MaskRCNN(
        StagesWithFPN(configuration),
        min_size=min(height, width),
        max_size=max(height, width),
        rpn_anchor_generator=AnchorGenerator(configuration.anchor_sizes, configuration.aspect_ratios),
        rpn_head=RPNHead(channels, per_location),
        rpn_pre_nms_top_n_test=configuration.rpn_pre_nms_top_n,
        rpn_post_nms_top_n_test=configuration.rpn_post_nms_top_n,
        rpn_nms_thresh=configuration.rpn_nms_thresh,
        rpn_score_thresh=configuration.rpn_score_thresh,
        box_roi_pool=_pooler(box),
        box_head=TwoMLPHead(channels * box.output_size**2, 32),
        box_predictor=FastRCNNPredictor(32, configuration.num_classes),
        box_score_thresh=configuration.box_score_thresh,
        box_nms_thresh=configuration.box_nms_thresh,
        box_detections_per_img=configuration.detections_per_img,
        mask_roi_pool=_pooler(mask),
        mask_head=MaskRCNNHeads(channels, (channels,), 1),
        mask_predictor=MaskRCNNPredictor(channels, channels, configuration.num_classes),
    )
    return model.eval()


def _pooler(pooling: Pooling) -> MultiScaleRoIAlign:
    return MultiScaleRoIAlign(
        list(pooling.maps), pooling.output_size, pooling.sampling_ratio,
        canonical_scale=pooling.canonical_scale, canonical_level=pooling.canonical_level,
    )


def scene_images(configuration: Configuration) -> np.ndarray:
    """[B,3,H,W] float32 RGB 0..255: a smooth background with noise and flat rectangles, each touching an edge or a
    corner of the canvas or lying inside it, so that objects and their boxes meet the canvas' edges."""
    rng = np.random.default_rng(configuration.seed + 1)
    height, width = configuration.image_size
    coarse = rng.uniform(0, 255, (configuration.batch, 3, height // 8 + 2, width // 8 + 2))
    images = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)[:, :, :height, :width]
    for image in images:
        for _ in range(int(rng.integers(3, 7))):
            box_height, box_width = int(rng.integers(2, height // 2)), int(rng.integers(2, width // 2))
            top = int(rng.choice([0, height - box_height, rng.integers(0, height - box_height)]))
            left = int(rng.choice([0, width - box_width, rng.integers(0, width - box_width)]))
            image[:, top : top + box_height, left : left + box_width] = rng.uniform(0, 255, (3, 1, 1))
    return np.clip(np.round(images + rng.normal(0, 12, images.shape)), 0, 255).astype(np.float32)


def make_detecting(model: MaskRCNN, images: np.ndarray, configuration: Configuration) -> None:
    """Random weights made to detect, as detection_support.make_detecting (its docstring says why each step), with
    the configuration's box regressor scale; the classifier's bias puts the best LIKELY_PROPOSALS proposals of each
    image above background for each detected class, so that small proposal counts (rpn_post_nms_top_n) detect too."""
    tensors = [torch.from_numpy(image) / 255 for image in images]
    calibrate_batchnorm(model, tensors)
    rng = np.random.default_rng(configuration.seed + 2)
    detected = rng.choice(np.arange(1, configuration.num_classes), size=min(2, configuration.num_classes - 1), replace=False)
    with torch.no_grad():
        model.rpn.head.bbox_pred.weight.mul_(configuration.regression_scale)
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(configuration.regression_scale)
        batched, _ = model.transform(tensors)
        features = model.backbone(batched.tensors)
        objectness, _ = model.rpn.head(list(features.values()))
        spread = 2.0 / torch.cat([level.flatten() for level in objectness]).std()
        model.rpn.head.cls_logits.weight.mul_(spread)
        model.rpn.head.cls_logits.bias.mul_(spread)
        proposals, _ = model.rpn(batched, features)
        pooled = model.roi_heads.box_roi_pool(features, proposals, batched.image_sizes)
        classifier = model.roi_heads.box_predictor.cls_score
        logits = model.roi_heads.box_head(pooled) @ classifier.weight.T
        scale = CLASS_LOGIT_STD / logits.std(0).clamp(min=1e-12)
        standard = (logits - logits.mean(0)) * scale
        per_image = standard.split([len(p) for p in proposals])
        likely = torch.stack([image.topk(min(LIKELY_PROPOSALS, len(image)), dim=0).values[-1] for image in per_image]).min(0).values
        classifier.weight.mul_(scale[:, None])
        classifier.bias.copy_(-logits.mean(0) * scale - 20.0)
        classifier.weight[0] = 0
        classifier.bias[0] = 0
        classes = torch.from_numpy(detected)
        classifier.bias[classes] += 20.0 + CLASS_LOGIT_MARGIN - likely[classes]


@dataclass
class Detections:
    """One image's detections, as torchvision's model returns them: masks pasted at the image's size."""

    boxes: np.ndarray  # [N,4]
    labels: np.ndarray  # [N]
    scores: np.ndarray  # [N]
    masks: np.ndarray  # [N,H,W] probabilities


def pytorch_detections(model: MaskRCNN, images: np.ndarray) -> list[Detections]:
    with torch.no_grad():
        found = model([torch.from_numpy(image) / 255 for image in images])
    return [Detections(f["boxes"].numpy(), f["labels"].numpy(), f["scores"].numpy(), f["masks"][:, 0].numpy()) for f in found]


def export_detections(path: Path, images: np.ndarray) -> list[Detections]:
    """The plain export on ONNX Runtime: boxes, labels, scores, pasted masks of each image in turn."""
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {i.name: image / 255 for i, image in zip(session.get_inputs(), images)}
    outputs = session.run(None, feeds)
    return [Detections(*outputs[4 * b : 4 * b + 3], outputs[4 * b + 3][:, 0]) for b in range(len(images))]


def deploy_detections(session: onnxruntime.InferenceSession, images: np.ndarray) -> list[Detections]:
    """A deploy graph's detections with its M×M masks pasted as torchvision pastes them."""
    feeds = {"images": images}
    if "image_sizes" in [i.name for i in session.get_inputs()]:
        feeds["image_sizes"] = np.tile(np.array(images.shape[2:], np.int32), (len(images), 1))
    count, boxes, scores, classes, masks = session.run(["num_detections", "boxes", "scores", "classes", "masks"], feeds)
    found = []
    for b, n in enumerate(count[:, 0]):
        pasted = paste_masks_in_image(torch.from_numpy(masks[b, :n, None]), torch.from_numpy(boxes[b, :n]), images.shape[2:])
        found.append(Detections(boxes[b, :n], classes[b, :n].astype(np.int64), scores[b, :n], pasted[:, 0].numpy()))
    return found


@dataclass(frozen=True)
class Difference:
    """How far two answers on the same images lie apart, detection by detection."""

    unpaired: int  # detections of either answer that the other has no partner for (same class, box IoU >= 0.5)
    worst_iou: float  # the lowest box IoU of a pair
    worst_score: float  # the largest score difference of a pair
    worst_mask: float  # the largest difference of a pair's pasted mask probabilities
    pairs: int


def difference(reference: list[Detections], other: list[Detections]) -> Difference:
    """Pairs each reference detection, best score first, with the other answer's unpaired detection of its class
    that overlaps it most (box IoU >= 0.5)."""
    unpaired = pairs = 0
    worst_iou, worst_score, worst_mask = 1.0, 0.0, 0.0
    for mine, theirs in zip(reference, other):
        overlaps = box_iou(torch.from_numpy(mine.boxes), torch.from_numpy(theirs.boxes)).numpy()
        overlaps[mine.labels[:, None] != theirs.labels[None, :]] = -1
        taken = np.zeros(len(theirs.boxes), bool)
        for i in range(len(mine.boxes)):
            candidates = np.where(taken, -1, overlaps[i])
            j = int(np.argmax(candidates)) if len(candidates) else -1
            if j < 0 or candidates[j] < 0.5:
                unpaired += 1
                continue
            taken[j] = True
            pairs += 1
            worst_iou = min(worst_iou, float(overlaps[i, j]))
            worst_score = max(worst_score, abs(float(mine.scores[i]) - float(theirs.scores[j])))
            worst_mask = max(worst_mask, float(np.abs(mine.masks[i] - theirs.masks[j]).max()))
        unpaired += int((~taken).sum())
    return Difference(unpaired, worst_iou, worst_score, worst_mask, pairs)


# How far two correct float32 graphs lie apart where the export and PyTorch happen to agree to the last bit. Measured on
# 520 configurations, the native deploy graphs differ from the export by up to 2e-5 in scores and 9e-6 in mask
# probabilities (their RoI pooling moves each RoI to its map's place in one mosaic, where float32 rounds its
# coordinates more coarsely) and by 6e-5 in box IoU (a box 6 pixels wide whose corners moved by 2e-4 pixels), the
# plugin ones by 1.4e-6, 3e-6 and 1.7e-6. The floors are ten times the largest, and far below what the defects this
# test found gave (scores off by 0.002 to 0.5, masks by 0.015 to 0.3, detections missing).
FLOAT32_ROUNDING = Difference(unpaired=0, worst_iou=1 - 6e-4, worst_score=2e-4, worst_mask=1e-4, pairs=0)


def tolerance(baseline: Difference) -> Difference:
    """What a graph may differ from the export by: what the export differs from PyTorch by, or float32 rounding."""
    return Difference(
        unpaired=baseline.unpaired,
        worst_iou=min(baseline.worst_iou, FLOAT32_ROUNDING.worst_iou),
        worst_score=max(baseline.worst_score, FLOAT32_ROUNDING.worst_score),
        worst_mask=max(baseline.worst_mask, FLOAT32_ROUNDING.worst_mask),
        pairs=baseline.pairs,
    )


def within(found: Difference, allowed: Difference) -> bool:
    return (
        found.unpaired <= allowed.unpaired
        and found.worst_iou >= allowed.worst_iou
        and found.worst_score <= allowed.worst_score
        and found.worst_mask <= allowed.worst_mask
    )
