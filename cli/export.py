"""`maskrt export`: a torchvision Mask R-CNN → ONNX (convert/export.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from maskrt.cli.arguments import flags, integer, size


def add(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    export = verbs.add_parser("export", parents=[common], help="torchvision Mask R-CNN → ONNX")
    export.add_argument(
        "--model",
        default="maskrcnn_resnet50_fpn",
        help="maskrcnn_resnet50_fpn (default), maskrcnn_resnet50_fpn_v2, maskrcnn_<backbone>_fpn for another "
        "torchvision ResNet or MobileNetV3 backbone (maskrcnn_resnet18_fpn, maskrcnn_mobilenet_v3_large_fpn, ...), "
        "or shapes-demo (the trained model that ships with maskrt)",
    )
    export.add_argument("--weights", type=Path, help="torchvision state_dict (.pth, .pt) or .safetensors")
    export.add_argument(
        "--num-classes",
        type=integer(2, "the background and one class"),
        help="classes including background (default: from the weights, else 91)",
    )
    export.add_argument(
        "--input-size", type=size, metavar="HxW", help="default 800x1344 (shapes-demo: 128x128, its training size)"
    )
    export.add_argument("--batch", type=integer(1), default=1, help="images per inference (default 1)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17, the newest TensorRT 8.x parses)")
    export.add_argument(
        "--seed", type=integer(0), default=0, help="seed of the random weights used when --weights is not given"
    )
    export.add_argument("-o", "--output", type=Path, required=True)
    export.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> None:
    from maskrt.convert.export import export_onnx

    chosen = flags(args, "weights", "num_classes", "input_size", "batch", "opset", "seed")
    export_onnx(args.model, args.output, console=console, **chosen)
