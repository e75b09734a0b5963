"""ResNet-50-FPN at 800x1344 on 640x480 images: the Predictor on the deploy graph (both plugin modes) answers as stock
torchvision's model(images) on the original images. torchvision resizes them to 800x1066 and pads to 800x1088;
the graph runs the 800x1344 canvas and follows each image's extent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maskrt.runtime.predictor import Predictor
from maskrt.runtime.preprocess import letterbox

from detection_support import convert, detecting_model, maskrt_export
from runtime_support import assert_same_detections, stock_torchvision


def camera_frames(count: int, seed: int) -> list[np.ndarray]:
    """640x480 RGB frames: smooth colour fields with noise, as letterboxed_images makes canvases."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, (480 // 16 + 1, 640 // 16 + 1, 3))
        smooth = np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1)[:480, :640]
        frames.append(np.clip(np.round(smooth + rng.normal(0, 20, smooth.shape)), 0, 255).astype(np.uint8))
    return frames


@pytest.mark.slow
def test_resnet50_fpn_on_640x480_frames_equals_stock_torchvision(tmp_path: Path) -> None:
    frames = camera_frames(2, seed=3)
    canvases = np.stack([letterbox(frame, (800, 1344), (0.485, 0.456, 0.406))[0] for frame in frames])
    model = detecting_model("maskrcnn_resnet50_fpn", 91, canvases)
    exported = maskrt_export("maskrcnn_resnet50_fpn", model, canvases[:1], tmp_path)
    stock = stock_torchvision(model, frames)
    assert all(len(found["scores"]) >= 5 for found in stock), "the test model should detect something in every frame"
    for plugins in ("native", "maskrt"):
        predictor = Predictor(convert(exported, plugins, "--box-score-thresh", "0.5"), score_threshold=0.0)
        for index, (ours, theirs) in enumerate(zip(predictor(frames), stock)):
            assert_same_detections(ours, theirs, f"frame {index} ({plugins})")
