"""Comparing the runtime's detections with stock torchvision's `model(images)` on the same original images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

from maskrt.calib.shapes import render_sample
from maskrt.contracts.plugins import PLUGIN_NAMESPACE, PLUGIN_VERSION
from maskrt.contracts.records import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeployRecord,
    DetectionSettings,
    EngineRecord,
    engine_record_json,
)
from maskrt.runtime.predictor import Detections

FRAME_SIZE = (150, 200)  # (h, w): a 4:3 frame, so that a square model letterboxes it


def shapes_frame(index: int, seed: int = 7, size: tuple[int, int] = FRAME_SIZE) -> np.ndarray:
    """An RGB frame of shapes at `size`, cut from a larger image of the synthetic dataset."""
    image = render_sample(seed, index, max(size))[0]
    return np.ascontiguousarray(image[: size[0], : size[1]])


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """RGB frames as an mp4 video."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def read_video(path: Path) -> list[np.ndarray]:
    """A video's frames as RGB, decoded as `maskrt infer` decodes them."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def stock_torchvision(model: torch.nn.Module, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """model(images) as a user runs it: RGB 0..1 tensors at their own size, torchvision's own transform; one image
    per call, so that no image is padded to another's size."""
    results = []
    with torch.no_grad():
        for image in images:
            [found] = model([torch.from_numpy(image).permute(2, 0, 1).float() / 255])
            results.append({key: value.numpy() for key, value in found.items()})
    return results


def assert_same_detections(ours: Detections, stock: dict[str, np.ndarray], what: str, min_mask_iou: float = 0.99) -> None:
    """Every detection of torchvision's matched by one of ours and nothing extra: same label, box IoU >= 0.99,
    score within 1e-3, pasted mask (> 0.5) IoU >= min_mask_iou."""
    assert len(ours) == len(stock["scores"]), f"{what}: {len(ours)} detections, torchvision {len(stock['scores'])}"
    if not len(ours):
        return
    ious = box_iou(torch.from_numpy(stock["boxes"]), torch.from_numpy(ours.boxes)).numpy()
    ious = np.where(stock["labels"][:, None] == ours.labels[None, :], ious, -1.0)
    claimed = np.zeros(len(ours), bool)
    for i in np.argsort(-stock["scores"], kind="stable"):
        j = int(np.argmax(np.where(claimed, -1.0, ious[i])))
        assert not claimed[j] and ious[i, j] >= 0.99, f"{what}: torchvision's detection {i} has no match (IoU {ious[i, j]:.4f})"
        claimed[j] = True
        assert abs(float(stock["scores"][i]) - float(ours.scores[j])) <= 1e-3, f"{what}: detection {i} scores differ"
        theirs = stock["masks"][i, 0] > 0.5
        union = (theirs | ours.masks[j]).sum()
        mask_iou = (theirs & ours.masks[j]).sum() / union if union else 1.0
        assert mask_iou >= min_mask_iou, f"{what}: detection {i} mask IoU {mask_iou:.4f}"


def engine_record(**changes: object) -> dict[str, object]:
    """The JSON of a whole model.engine.json for shapes-demo's native deploy graph built by TensorRT 10.3 on an Orin,
    as trt-convert writes it; `changes` replace its fields."""
    deploy = DeployRecord(
        plugins="native",
        plugin_namespace=PLUGIN_NAMESPACE,
        plugin_version=PLUGIN_VERSION,
        batch=1,
        input_size=(128, 128),
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        num_classes=4,
        mask_size=28,
        class_names=("background", "circle", "square", "triangle"),
        settings=DetectionSettings(),
        source_sha256="0" * 64,
    )
    record = EngineRecord(deploy, tensorrt_version="10.3.0.30", gpu="Orin", compute_capability="87", precision="fp16")
    return {**json.loads(engine_record_json(record)), **changes}


def shapes_demo_engine(path: Path, data: bytes = b"\x07" * 64, **changes: object) -> Path:
    """An engine file of `data` and its json as trt-convert writes them (engine_record, with `changes`); TensorRT gets
    no further than the json without a GPU."""
    path.write_bytes(data)
    path.with_name(path.name + ".json").write_text(json.dumps(engine_record(**{"engine_bytes": len(data), **changes})))
    return path
