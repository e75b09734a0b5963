"""`maskrt convert` and `trt-convert`: an export → the deploy graph → the FP16/INT8 graph → the TensorRT engine
(convert/pipeline.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from maskrt.cli.arguments import flags, fraction, integer, maskrt_version, options_from, positive_number, size
from maskrt.contracts.plugins import PLUGIN_MODES
from maskrt.contracts.precisions import CALIBRATION_METHODS, CALIBRATORS, PRECISIONS
from maskrt.contracts.records import LAYOUTS


def add(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    convert = verbs.add_parser(
        "convert", parents=[common], help="ONNX export → deploy graph (surgery) → FP16/INT8 ONNX → TensorRT engine"
    )
    convert.add_argument("--version", action="version", version=maskrt_version())
    convert.add_argument(
        "model", type=Path, help="ONNX from `maskrt export` or torch.onnx.export(model, ...), or a deploy graph"
    )
    convert.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the engine (default: model.engine beside the input; the deploy graph and the FP16/INT8 graph go beside "
        "it as <name>.deploy.onnx, <name>.fp16.onnx, <name>.int8.onnx), or with --onnx-only the precision ONNX, or with "
        "--surgery-only the deploy graph (default: deploy.onnx beside the export)",
    )
    convert.add_argument("--surgery-only", action="store_true", help="write the deploy graph and stop")
    convert.add_argument(
        "--onnx-only",
        action="store_true",
        help="write the precision ONNX (FP16: AutoCast; INT8: Q/DQ) and stop, to build the engine on another machine",
    )
    convert.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        help="engine precision (default fp16, or the precision of an FP16/INT8 graph given as the model)",
    )
    convert.add_argument(
        "--plugins",
        choices=list(PLUGIN_MODES),
        help="maskrt: custom RoIAlign/NMS plugins (default; TensorRT >= 10); native: standard ONNX ops only "
        "(TensorRT 8.5/8.6, trtexec, DeepStream, Triton)",
    )
    convert.add_argument(
        "--single-input", action="store_true", help="a deploy graph with `images` only, clipped to HxW (DeepStream)"
    )
    convert.add_argument(
        "--layout",
        choices=list(LAYOUTS),
        default=LAYOUTS[0],
        help="the deploy graph's outputs: maskrt's (default), or deepstream: the two that DeepStream's shipped Mask "
        "R-CNN parser (NvDsInferParseCustomMrcnnTLTV2) reads, from one input (with --plugins native)",
    )
    convert.add_argument("--input-size", type=size, metavar="HxW", help="fixes the size of a dynamic-size export")
    convert.add_argument(
        "--max-batch",
        type=integer(1),
        metavar="N",
        help="a deploy graph with a symbolic batch that runs 1 to N images, from an export of any batch; its engine "
        "gets an optimization profile from 1 to N (default: the export's batch, static)",
    )
    convert.add_argument(
        "--opt-batch", type=integer(1), metavar="M", help="the batch the engine's profile is tuned for (1..N, default N)"
    )
    convert.add_argument(
        "--default-anchors",
        action="store_true",
        help="use torchvision's default anchors when the export's graph does not show its own (otherwise an error)",
    )
    calibration = convert.add_argument_group("INT8 calibration")
    # The dests of the option groups are the fields of the options they make (cli.arguments.options_from).
    calibration.add_argument(
        "--calib-images", dest="images", type=Path, metavar="DIR", help="a folder of images, or a COCO folder (images/ + instances.json)"
    )
    calibration.add_argument("--calib-annotations", dest="annotations", type=Path, metavar="JSON", help="the instances json of --calib-images")
    calibration.add_argument(
        "--calib-count", dest="count", type=integer(1), default=512, metavar="N", help="images sampled for calibration (default 512)"
    )
    calibration.add_argument(
        "--calib-method", dest="method", choices=list(CALIBRATION_METHODS), default="entropy", help="ModelOpt's PTQ calibration"
    )
    calibration.add_argument(
        "--int8-calibrator",
        dest="calibrator",
        choices=list(CALIBRATORS),
        default="qdq",
        help="qdq: a Q/DQ graph from ModelOpt (default, every TensorRT); legacy: TensorRT's IInt8EntropyCalibrator2 "
        "with a reusable cache beside the engine (TensorRT <= 10)",
    )
    engine = convert.add_argument_group("engine build")
    engine.add_argument(
        "--workspace", dest="workspace_gib", type=positive_number, default=4.0, metavar="GiB", help="TensorRT's workspace (default 4)"
    )
    engine.add_argument(
        "--timing-cache", type=Path, metavar="FILE", help="TensorRT's timing cache (default: one per TensorRT and GPU "
        "under ~/.cache/maskrt/tensorrt), read before and updated after the build"
    )
    engine.add_argument("--dla-core", type=integer(0), metavar="N", help="build for DLA core N, with GPU fallback (Jetson)")
    engine.add_argument(
        "--opt-level", type=int, choices=range(6), metavar="0-5", help="TensorRT's builder optimization level (default 3)"
    )
    settings = convert.add_argument_group("detection settings (default: the model's own)")
    settings.add_argument("--rpn-pre-nms-top-n", type=integer(1), help="proposals kept per FPN level before NMS")
    settings.add_argument("--rpn-post-nms-top-n", type=integer(1), help="proposals kept per image after NMS")
    settings.add_argument("--rpn-nms-thresh", type=fraction, help="IoU threshold of the proposal NMS")
    settings.add_argument("--rpn-score-thresh", type=fraction, help="minimum objectness of a proposal")
    settings.add_argument("--box-score-thresh", type=fraction, help="minimum class score of a detection")
    settings.add_argument("--box-nms-thresh", type=fraction, help="IoU threshold of the per-class detection NMS")
    settings.add_argument("--detections-per-img", type=integer(1), help="K: detections kept per image")
    convert.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> None:
    from maskrt.convert.build import BuildOptions
    from maskrt.convert.pipeline import CalibrationOptions, convert
    from maskrt.convert.settings import DeployOptions, SettingsOverride

    graph = options_from(args, DeployOptions, overrides=options_from(args, SettingsOverride))
    calibration, build = options_from(args, CalibrationOptions), options_from(args, BuildOptions)
    steps = flags(args, "precision", "onnx_only", "surgery_only")
    convert(args.model, args.output, graph=graph, calibration=calibration, options=build, console=console, **steps)
