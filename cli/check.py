"""`maskrt check`: PyTorch against the export, deploy graphs and engines, in a report (check/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from maskrt.cli import exits
from maskrt.cli.arguments import integer, non_negative_number
from maskrt.contracts.errors import BadInput


def add(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    check = verbs.add_parser(
        "check",
        parents=[common],
        help="PyTorch against the export, deploy graphs and engines: tensors, detections and COCO AP, in a report",
        description="Runs the PyTorch model and every graph and engine given on the same letterboxed images and writes "
        "REPORT/index.html, report.md, report.json and each backend's COCO results. Exit 1 when a backend fails the "
        "check (AP below PyTorch's by more than --max-ap-drop, an FP32 graph's tensors off by more than "
        "--max-tensor-error, an image it cannot answer), 3 when an engine could not run here.",
    )
    model = check.add_mutually_exclusive_group(required=True)
    model.add_argument("--torchvision", metavar="NAME", help="the model as `maskrt export --model` names it; with --weights")
    model.add_argument("--shapes-demo", action="store_true", help="the demo model that ships with maskrt")
    check.add_argument("--weights", type=Path, help="its torchvision state_dict (.pth, .pt) or .safetensors")
    check.add_argument(
        "--num-classes",
        type=integer(2, "the background and one class"),
        help="classes including background (default: from the weights)",
    )
    check.add_argument("--onnx", type=Path, help="the export (model.onnx)")
    check.add_argument("--deploy", type=Path, action="append", default=[], help="a deploy graph (FP32, FP16 or INT8); repeat for more")
    check.add_argument("--engine", type=Path, action="append", default=[], help="a TensorRT engine; repeat for more")
    check.add_argument("--images", type=Path, required=True, help="a folder of images, or a COCO folder (images/ and instances.json)")
    check.add_argument("--annotations", type=Path, help="COCO instances json (default: instances.json in --images, if any)")
    check.add_argument(
        "--max-ap-drop",
        type=non_negative_number,
        default=0.5,
        metavar="POINTS",
        help="the most box or mask AP (0-100) a backend may lose against PyTorch on the same input (default 0.5)",
    )
    check.add_argument(
        "--max-tensor-error",
        type=non_negative_number,
        default=1e-3,
        metavar="ERROR",
        help="the most an FP32 graph's dense tensors may differ from PyTorch's, relative to their magnitude (default 0.001)",
    )
    check.add_argument("--tensor-images", type=integer(0), default=10, metavar="N", help="images whose tensors are compared (default 10)")
    check.add_argument("-o", "--output", type=Path, required=True, help="the report folder")
    check.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from maskrt.calib.images import list_images
    from maskrt.check.accuracy import gate, open_backends, run_check
    from maskrt.check.report import check_report_folder, print_summary, report_folder, write_report
    from maskrt.convert.export import class_names
    from maskrt.convert.models import SHAPES_DEMO, load_model

    check_report_folder(args.output)
    if args.torchvision and args.weights is None:
        raise BadInput(f"--torchvision {args.torchvision}: give its weights with --weights FILE")
    if args.annotations is not None and not args.annotations.is_file():
        raise BadInput(f"{args.annotations}: file not found")
    inputs = [p for p in (args.onnx, *args.deploy, *args.engine, args.weights, args.images, args.annotations) if p]
    if any(args.output.resolve() == p.resolve() for p in inputs):
        raise BadInput(f"{args.output}: is one of the inputs; choose a new report folder")
    backends = open_backends(args.onnx, args.deploy, args.engine, console)
    name = SHAPES_DEMO if args.shapes_demo else args.torchvision
    model = load_model(name, args.weights, args.num_classes)
    images = list_images(args.images, args.annotations, console)
    if images.annotations is None:
        console.print(f"{args.images}: no annotations: comparing tensors and detections, no COCO AP")
    with report_folder(args.output) as staging:
        result = run_check(
            model,
            backends,
            images.entries,
            images.annotations,
            staging,
            class_names(name, model),
            args.tensor_images,
            console,
        )
        failures = gate(result, args.max_ap_drop, args.max_tensor_error)
        data = write_report(result, staging, failures, args.max_ap_drop, args.max_tensor_error)
    print_summary(data, args.output, console)
    return exits.FAILED if failures else exits.NO_TENSORRT if result.not_run else exits.DONE
