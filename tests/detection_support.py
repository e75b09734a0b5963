"""Random-weight Mask R-CNNs that detect things, for comparing a deploy graph with PyTorch.

Random weights rarely score anything above 0.05, and when they do, every box and score sits on a knife's edge
(thousands of near-equal candidates fighting for the last detection slots), so a 1e-6 difference between two
float32 runtimes changes which boxes survive. `make_detecting` perturbs the predictors instead, the same way in
the model that is exported and the one that PyTorch runs:
- the backbone's BatchNorm statistics are set from the images' own activations, layer by layer, as if the backbone
  had been trained on them: random weights otherwise shrink activations layer after layer (MobileNetV3's to 1e-9),
  and RoIs whose features barely differ give logits that are all cancellation error;
- the RPN's and the box head's box regressors are scaled by 0.05, so boxes stay close to their anchors and
  proposals instead of collapsing into slivers;
- the RPN's objectness is rescaled to a standard deviation of 2 over the images' anchors: random backbones can
  give logits of 1e-9, whose sigmoids all round to exactly 0.5 and leave proposal order to tie-breaking;
- the box classifier is rescaled so that, over the given images' proposals, the logit of each chosen class is
  N(-6, 3) (background at 0, every other class far below): a few proposals per class score well above 0.5, with
  scores spread apart. With the score threshold at 0.5 a few dozen detections survive, well below the per-image cap.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from maskrt.cli.main import main as maskrt
from maskrt.convert.models import load_model
from maskrt.plugins import cpu_session

from matching import match_detections
from torchvision_reference import keep_input_size, reference_outputs

DETECTED_CLASSES = (1, 2)
SCORE_THRESH = 0.5
# The detected classes' logits over the images' proposals: N(CLASS_LOGIT_MEAN, CLASS_LOGIT_STD).
CLASS_LOGIT_MEAN = -6.0
CLASS_LOGIT_STD = 3.0


def letterboxed_images(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """[B,3,H,W] float32 RGB 0..255: smooth random colour fields with noise, whole-pixel values as decoded images."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (batch, 3, height // 16 + 1, width // 16 + 1))
    smooth = np.repeat(np.repeat(coarse, 16, axis=2), 16, axis=3)[:, :, :height, :width]
    return np.clip(np.round(smooth + rng.normal(0, 20, smooth.shape)), 0, 255).astype(np.float32)


def detecting_model(name: str, num_classes: int, images: np.ndarray, seed: int = 0) -> torch.nn.Module:
    model = load_model(name, None, num_classes, seed)
    make_detecting(model, images)
    return model


def every_setting_changed(images: np.ndarray) -> MaskRCNN:
    """A MobileNetV3 FPN Mask R-CNN (maps "0" and "1" of one stride, and "pool") with every setting that surgery
    uses changed from torchvision's defaults (all but RoIHeads' box min_size, a literal in torchvision), made to
    detect on `images`: other anchors at each level (so the two levels of one grid differ), normalisation,
    size_divisible, RPN top-n, thresholds and min_size, both box coders' weights and their clip, box thresholds and
    detections per image, and pooling over "0" and "pool" with another canonical scale and level for each head."""
    torch.manual_seed(0)
    backbone = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True, trainable_layers=6)
    sizes = ((24, 48), (96, 192, 384), (320,))
    anchors = AnchorGenerator(sizes, ((0.4, 1.0, 2.5), (0.5, 2.0), (0.3, 0.6, 1.0, 1.7, 2.6, 4.0)))  # 6 per location
    model = MaskRCNN(
        backbone,
        num_classes=4,
        image_mean=[0.5, 0.45, 0.4],
        image_std=[0.3, 0.25, 0.2],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=150,
        rpn_nms_thresh=0.6,
        rpn_score_thresh=0.2,
        box_nms_thresh=0.4,
        box_detections_per_img=12,
        bbox_reg_weights=(8.0, 8.0, 4.0, 4.0),
        box_roi_pool=MultiScaleRoIAlign(["0", "pool"], 7, 3, canonical_scale=128, canonical_level=5),
        mask_roi_pool=MultiScaleRoIAlign(["0", "pool"], 14, 2, canonical_scale=100, canonical_level=5),
    ).eval()
    model.transform.size_divisible = 64
    model.rpn.min_size = 2.0
    model.rpn.box_coder.weights = (2.0, 2.0, 1.5, 1.5)
    model.rpn.box_coder.bbox_xform_clip = model.roi_heads.box_coder.bbox_xform_clip = math.log(800 / 16)
    make_detecting(model, images)
    model.roi_heads.score_thresh = 0.3  # with the cap of 12 per image, both limit what is kept
    return model


def make_detecting(model: torch.nn.Module, images: np.ndarray) -> None:
    _, _, height, width = images.shape
    keep_input_size(model, height, width)
    tensors = [torch.from_numpy(image) / 255 for image in images]
    calibrate_batchnorm(model, tensors)
    with torch.no_grad():
        model.rpn.head.bbox_pred.weight.mul_(0.05)
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(0.05)
        batched, _ = model.transform(tensors)
        features = model.backbone(batched.tensors)
        objectness, _ = model.rpn.head(list(features.values()))
        objectness_std = torch.cat([level.flatten() for level in objectness]).std()
        model.rpn.head.cls_logits.weight.mul_(2.0 / objectness_std)
        model.rpn.head.cls_logits.bias.mul_(2.0 / objectness_std)
        proposals, _ = model.rpn(batched, features)
        pooled = model.roi_heads.box_roi_pool(features, proposals, batched.image_sizes)
        classifier = model.roi_heads.box_predictor.cls_score
        logits = model.roi_heads.box_head(pooled) @ classifier.weight.T
        scale = CLASS_LOGIT_STD / logits.std(0)
        classifier.weight.mul_(scale[:, None])
        classifier.bias.copy_(-logits.mean(0) * scale - 20.0)
        classifier.weight[0] = 0
        classifier.bias[0] = 0
        for label in DETECTED_CLASSES:
            classifier.bias[label] += 20.0 + CLASS_LOGIT_MEAN
    model.roi_heads.score_thresh = SCORE_THRESH


def calibrate_batchnorm(model: torch.nn.Module, images: list[torch.Tensor]) -> None:
    """Each backbone BatchNorm's running mean and variance become those of its input on `images`."""

    def set_statistics(norm: torch.nn.Module, inputs: tuple[torch.Tensor]) -> None:
        norm.running_mean.copy_(inputs[0].mean((0, 2, 3)))
        norm.running_var.copy_(inputs[0].var((0, 2, 3)))

    norms = [m for m in model.backbone.modules() if isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d))]
    hooks = [norm.register_forward_pre_hook(set_statistics) for norm in norms]
    with torch.no_grad():
        model.backbone(model.transform(images)[0].tensors)
    for hook in hooks:
        hook.remove()


@dataclass
class Case:
    model: nn.Module
    images: np.ndarray
    exported: Path
    flags: tuple[str, ...]  # what the command line must add for the settings the export does not carry
    reference: dict[str, np.ndarray]


OUTPUTS = ("num_detections", "boxes", "scores", "classes", "masks")


def plain_export(model: nn.Module, images: np.ndarray, path: Path, dynamic: bool = False, opset: int = 17) -> Path:
    """What a user gets from torch.onnx.export(model, ...), by default at opset 17."""
    inputs = [torch.from_numpy(image) / 255 for image in images]
    names = [f"image{i}" for i in range(len(inputs))]
    axes = {name: {1: "height", 2: "width"} for name in names} if dynamic else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (inputs,), path, opset_version=opset, dynamo=False, input_names=names, dynamic_axes=axes)
    return path


def plain_case(model: nn.Module, images: np.ndarray, folder: Path) -> Case:
    """`model` on `images`, exported into `folder` by plain torch.onnx.export, with PyTorch's answers."""
    return Case(model, images, plain_export(model, images, folder / "model.onnx"), (), reference_outputs(model, images))


def maskrt_export(model_name: str, model: nn.Module, images: np.ndarray, tmp_path: Path) -> Path:
    weights, output = tmp_path / "weights.pth", tmp_path / "model.onnx"
    torch.save(model.state_dict(), weights)
    _, _, height, width = images.shape
    classes = str(model.roi_heads.box_predictor.cls_score.out_features)
    argv = ["export", "--model", model_name, "--weights", str(weights), "--num-classes", classes]
    assert maskrt([*argv, "--input-size", f"{height}x{width}", "--batch", str(len(images)), "-o", str(output)]) == 0
    return output


def assert_matches(deploy: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    """Every reference detection matched (class, box IoU >= 0.99, score and M×M mask within 1e-3), nothing extra: the
    tests' own matching (tests/matching.py), not maskrt.check.compare, judges."""
    for b, image in enumerate(match_detections(reference, deploy)):
        assert image.matched == reference["num_detections"][b, 0], f"image {b}: missing {image.missing}"
        assert not image.extra, f"image {b}: extra detections {image.extra}"
        assert image.worst_iou >= 0.99 and image.worst_score <= 1e-3 and image.worst_mask <= 1e-3, image


def assert_refused(capsys: pytest.CaptureFixture[str], argv: list[str], output: Path, *expected: str) -> None:
    """Exit code 2, one line on stderr that says each of `expected`, and neither `output` nor a temporary file beside
    it."""
    assert maskrt(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    for words in expected:
        assert words in error, error
    assert not output.exists()
    if output.parent.exists():
        assert not [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}")], "temporary file left"


def surgery(model: Path, output: Path, *flags: str) -> list[str]:
    """The command line of `maskrt convert --surgery-only`."""
    return ["convert", str(model), "--surgery-only", "-o", str(output), *flags]


def convert(model_path: Path, plugins: str, *flags: str) -> Path:
    output = model_path.with_name(f"deploy.{plugins}.onnx")
    assert maskrt(surgery(model_path, output, "--plugins", plugins, *flags)) == 0
    return output


def run_deploy(path: Path, images: np.ndarray, image_sizes: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The deploy graph's outputs on ONNX Runtime; image_sizes (default: every image fills the canvas) when the graph
    reads them."""
    session = cpu_session(path)
    feeds = {"images": images}
    if "image_sizes" in [i.name for i in session.get_inputs()]:
        full = np.tile(np.array(images.shape[2:], np.int32), (len(images), 1))
        feeds["image_sizes"] = full if image_sizes is None else image_sizes.astype(np.int32)
    return dict(zip(OUTPUTS, session.run(list(OUTPUTS), feeds)))


def settings_sources(printed: str) -> dict[str, str]:
    """Where each value came from, from the settings table that surgery prints (setting │ value │ from)."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in printed.splitlines() if line.count("│") == 4]
    return {setting: source for setting, _, source in rows}
