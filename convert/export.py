"""torchvision Mask R-CNN → ONNX at a fixed input size and batch, with the model's settings in the metadata."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import onnx
import torch
from rich.console import Console
from torch.onnx._constants import ONNX_MAX_OPSET  # the newest opset torch.onnx.export writes

from maskrt.contracts.errors import BadInput
from maskrt.contracts.files import check_output_path, write_atomically
from maskrt.contracts.records import write_export_record
from maskrt.convert.models import COCO_NUM_CLASSES, SHAPES_DEMO, load_model
from maskrt.convert.settings import MIN_OPSET, record_of

DEFAULT_OPSET = 17
DEFAULT_INPUT_SIZE = (800, 1344)
NEWEST_OPSET = ONNX_MAX_OPSET


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
    check_output_path(output, *([weights] if weights is not None else []))
    if not MIN_OPSET <= opset <= NEWEST_OPSET:
        raise BadInput(
            f"--opset {opset} is outside {MIN_OPSET}..{NEWEST_OPSET}: opset {MIN_OPSET} is the first with RoiAlign and "
            f"NonMaxSuppression, {NEWEST_OPSET} the newest that this PyTorch exports"
        )
    model = load_model(model_name, weights, num_classes, seed)
    if input_size is None:
        input_size = default_input_size(model_name)
    _check_input_size(model, model_name, input_size)
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


def coarsest_stride(model: torch.nn.Module) -> int:
    """The stride of the model's coarsest FPN level, measured on a probe image."""
    probe = 256
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, probe, probe))  # type: ignore[operator]
    return max(probe // feature.shape[-1] for feature in features.values())


def _check_input_size(model: torch.nn.Module, name: str, input_size: tuple[int, int]) -> None:
    """torchvision pads images to a multiple of size_divisible; the padded image must hold at least one cell of the
    coarsest FPN level, or that level shrinks to the same 1x1 grid as the level before it."""
    stride, divisible = coarsest_stride(model), int(model.transform.size_divisible)  # type: ignore[union-attr]
    smallest = (math.ceil(stride / divisible) - 1) * divisible + 1
    if min(input_size) < smallest:
        raise BadInput(
            f"--input-size {input_size[0]}x{input_size[1]} is too small for {name}: padded to a multiple of "
            f"{divisible}, it must hold one {stride}x{stride} cell of the coarsest FPN level; the smallest size is "
            f"{smallest}x{smallest}"
        )


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
