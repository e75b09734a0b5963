"""torchvision Mask R-CNN → ONNX at a fixed input size and batch, with the model's settings in the metadata."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import torch
from rich.console import Console

from maskrt.runtime.files import check_output_path, write_atomically
from maskrt.convert.models import COCO_NUM_CLASSES, SHAPES_DEMO, load_model
from maskrt.convert.settings import MIN_OPSET, record_of, write_export_record

DEFAULT_OPSET = 17
DEFAULT_INPUT_SIZE = (800, 1344)


def export_onnx(
    model_name: str,
    output: Path,
    weights: Path | None = None,
    num_classes: int | None = None,
    input_size: tuple[int, int] | None = None,
    batch: int = 1,
    opset: int = DEFAULT_OPSET,
    seed: int = 0,
    console: Console | None = None,
) -> onnx.ModelProto:
    """Exports the named Mask R-CNN the way `torch.onnx.export(model, ...)` does, and records its settings.

    The model's transform is set so that an input of exactly `input_size` is not resized: the deploy graph takes
    images already letterboxed to that size.
    """
    console = console or Console(stderr=True)
    check_output_path(output)
    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    if opset < MIN_OPSET:
        raise ValueError(f"--opset {opset} is below {MIN_OPSET}, the first opset with RoiAlign and NonMaxSuppression")
    model = load_model(model_name, weights, num_classes, seed)
    if input_size is None:
        input_size = default_input_size(model_name)
    if weights is None and model_name != SHAPES_DEMO:
        console.print(
            f"WARNING: no --weights given: {model_name} has RANDOM weights (seed {seed}); "
            "it will not detect anything meaningful",
            style="bold yellow",
        )
    height, width = input_size
    model.transform.min_size = (min(height, width),)
    model.transform.max_size = max(height, width)
    images = [torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed)) for _ in range(batch)]

    buffer = io.BytesIO()
    console.print(f"exporting {model_name} at {height}x{width}, batch {batch}, opset {opset}")
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about every data-dependent branch of torchvision's detection code.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (images,), buffer, opset_version=opset, dynamo=False)
    exported = onnx.load_from_string(buffer.getvalue())
    write_export_record(exported, record_of(model, model_name, input_size, batch, class_names(model_name, model)))
    write_atomically(output, exported.SerializeToString())
    console.print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")
    return exported


def default_input_size(model_name: str) -> tuple[int, int]:
    if model_name == SHAPES_DEMO:
        from maskrt.convert import shapes_demo

        return shapes_demo.INPUT_SIZE, shapes_demo.INPUT_SIZE
    return DEFAULT_INPUT_SIZE


def class_names(model_name: str, model: torch.nn.Module) -> tuple[str, ...]:
    """Class names by label id, where known: COCO's for 91-class models, the demo model's own."""
    if model_name == SHAPES_DEMO:
        from maskrt.convert import shapes_demo

        return tuple(shapes_demo.CLASS_NAMES)
    if model.roi_heads.box_predictor.cls_score.out_features == COCO_NUM_CLASSES:  # type: ignore[union-attr]
        from torchvision.models.detection.mask_rcnn import MaskRCNN_ResNet50_FPN_Weights

        return tuple(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
    return ()
