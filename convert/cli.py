"""maskrt's command line: `maskrt <verb> ...`, and `trt-convert` as the short name of `maskrt convert`.

Every verb reports a bad input, a mistyped flag included, as one line on stderr naming the file or flag and what is
wrong, and exits with 2; --verbose prints the traceback before that line and changes nothing else.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import fields
from importlib.metadata import version
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.text import Text

from maskrt.convert.build import MissingTensorRT
from maskrt.convert.targets import TARGETS
from maskrt.runtime.progress import make_console

EXIT_BAD_INPUT = 2
# What conversion needs and `pip install maskrt` (the runtime) leaves out.
CONVERSION_PACKAGES = ("torch", "torchvision", "onnx_graphsurgeon", "safetensors", "modelopt", "matplotlib")
EXIT_MISSING_TENSORRT = 3  # everything CPU-side done; TensorRT, its builder or a GPU is missing here


class UsageError(Exception):
    """A command line that argparse refused: printed as one line, exit 2."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print its usage block; one line names the flag and what is wrong, as for a bad file.
        raise UsageError(self.prog, f"{message} (see {self.prog} --help)")


def main(argv: Sequence[str] | None = None, prog: str = "maskrt") -> int:
    parser, verbs = _parser()
    if prog != "maskrt":
        verbs.choices["convert"].prog = prog
    console = make_console()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # said by the verb's parser, so that trt-convert's mistakes are trt-convert's
            verbs.choices[args.verb].error(f"unrecognized arguments: {' '.join(unknown)}")
    except UsageError as error:
        _print_error(console, error.prog, error)
        return EXIT_BAD_INPUT
    except SystemExit as done:  # --help and --version
        return int(done.code or 0)
    name = verbs.choices[args.verb].prog
    started = time.perf_counter()
    try:
        code = args.run(args, console) or 0
    except (ValueError, OSError) as error:
        _print_error(console, name, error, args.verbose)
        return EXIT_BAD_INPUT
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in CONVERSION_PACKAGES:
            raise
        missing = ValueError(f"needs {error.name}, which the runtime install leaves out: pip install 'maskrt[convert]'")
        _print_error(console, name, missing, args.verbose)
        return EXIT_BAD_INPUT
    except MissingTensorRT as error:
        console.print(Text.assemble((f"{name}: ", "bold yellow"), str(error)), soft_wrap=True)
        return EXIT_MISSING_TENSORRT
    console.print(f"{name}: done in {time.perf_counter() - started:.1f} s", style="dim")
    return code


def _print_error(console: Console, prog: str, error: Exception, verbose: bool = False) -> None:
    """One line on stderr; --verbose puts the traceback of the error being handled before it."""
    if verbose:
        console.print(Text(traceback.format_exc().rstrip()), soft_wrap=True)
    console.print(Text.assemble((f"{prog}: error: ", "bold red"), str(error)), soft_wrap=True)


def trt_convert(argv: Sequence[str] | None = None) -> int:
    return main(["convert", *(sys.argv[1:] if argv is None else argv)], prog="trt-convert")


def _parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = _Parser(prog="maskrt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    common = _Parser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="full tracebacks and TensorRT's own log")
    for add_verb in (
        _add_export, _add_convert, _add_lint, _add_shapes, _add_plugins, _add_infer, _add_bench, _add_check, _add_demo
    ):
        add_verb(verbs, common)
    return parser, verbs


def _version() -> str:
    return f"maskrt {version('maskrt')}"


def _add_export(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
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
        type=_integer(2, "the background and one class"),
        help="classes including background (default: from the weights, else 91)",
    )
    export.add_argument(
        "--input-size", type=_size, metavar="HxW", help="default 800x1344 (shapes-demo: 128x128, its training size)"
    )
    export.add_argument("--batch", type=_integer(1), default=1, help="images per inference (default 1)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17, the newest TensorRT 8.x parses)")
    export.add_argument(
        "--seed", type=_integer(0), default=0, help="seed of the random weights used when --weights is not given"
    )
    export.add_argument("-o", "--output", type=Path, required=True)
    export.set_defaults(run=_export)


def _add_convert(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    convert = verbs.add_parser(
        "convert", parents=[common], help="ONNX export → deploy graph (surgery) → FP16/INT8 ONNX → TensorRT engine"
    )
    convert.add_argument("--version", action="version", version=_version())
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
        choices=["fp32", "fp16", "int8"],
        help="engine precision (default fp16, or the precision of an FP16/INT8 graph given as the model)",
    )
    convert.add_argument(
        "--plugins",
        choices=["maskrt", "native"],
        help="maskrt: custom RoIAlign/NMS plugins (default; TensorRT >= 10); native: standard ONNX ops only "
        "(TensorRT 8.5/8.6, trtexec, DeepStream, Triton)",
    )
    convert.add_argument(
        "--single-input", action="store_true", help="a deploy graph with `images` only, clipped to HxW (DeepStream)"
    )
    convert.add_argument("--input-size", type=_size, metavar="HxW", help="fixes the size of a dynamic-size export")
    convert.add_argument(
        "--default-anchors",
        action="store_true",
        help="use torchvision's default anchors when the export's graph does not show its own (otherwise an error)",
    )
    calibration = convert.add_argument_group("INT8 calibration")
    calibration.add_argument(
        "--calib-images", type=Path, metavar="DIR", help="a folder of images, or a COCO folder (images/ + instances.json)"
    )
    calibration.add_argument("--calib-annotations", type=Path, metavar="JSON", help="the instances json of --calib-images")
    calibration.add_argument(
        "--calib-count", type=_integer(1), default=512, metavar="N", help="images sampled for calibration (default 512)"
    )
    calibration.add_argument(
        "--calib-method", choices=["entropy", "max", "percentile"], default="entropy", help="ModelOpt's PTQ calibration"
    )
    calibration.add_argument(
        "--int8-calibrator",
        choices=["qdq", "legacy"],
        default="qdq",
        help="qdq: a Q/DQ graph from ModelOpt (default, every TensorRT); legacy: TensorRT's IInt8EntropyCalibrator2 "
        "with a reusable cache beside the engine (TensorRT <= 10)",
    )
    engine = convert.add_argument_group("engine build")
    engine.add_argument(
        "--workspace", type=_positive_number, default=4.0, metavar="GiB", help="TensorRT's workspace (default 4)"
    )
    engine.add_argument(
        "--timing-cache", type=Path, metavar="FILE", help="TensorRT's timing cache (default: one per TensorRT and GPU "
        "under ~/.cache/maskrt/tensorrt), read before and updated after the build"
    )
    engine.add_argument("--dla-core", type=_integer(0), metavar="N", help="build for DLA core N, with GPU fallback (Jetson)")
    engine.add_argument(
        "--opt-level", type=int, choices=range(6), metavar="0-5", help="TensorRT's builder optimization level (default 3)"
    )
    settings = convert.add_argument_group("detection settings (default: the model's own)")
    settings.add_argument("--rpn-pre-nms-top-n", type=_integer(1), help="proposals kept per FPN level before NMS")
    settings.add_argument("--rpn-post-nms-top-n", type=_integer(1), help="proposals kept per image after NMS")
    settings.add_argument("--rpn-nms-thresh", type=_fraction, help="IoU threshold of the proposal NMS")
    settings.add_argument("--rpn-score-thresh", type=_fraction, help="minimum objectness of a proposal")
    settings.add_argument("--box-score-thresh", type=_fraction, help="minimum class score of a detection")
    settings.add_argument("--box-nms-thresh", type=_fraction, help="IoU threshold of the per-class detection NMS")
    settings.add_argument("--detections-per-img", type=_integer(1), help="K: detections kept per image")
    convert.set_defaults(run=_convert)


def _add_lint(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    lint = verbs.add_parser("lint", parents=[common], help="check that a deploy graph is TensorRT-ready")
    lint.add_argument("model", type=Path)
    lint.add_argument(
        "--target",
        choices=list(TARGETS),
        help="the TensorRT to check against (default: the oldest the graph's plugin mode allows: trt8.5 for "
        "--plugins native, trt10 for maskrt plugins)",
    )
    lint.add_argument("--all", action="store_true", help="list every problem, not the first few of each kind")
    lint.set_defaults(run=_lint)


def _add_shapes(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    shapes = verbs.add_parser("shapes", parents=[common], help="write the synthetic COCO-format shapes dataset")
    shapes.add_argument("--count", type=_integer(1), default=200, help="images to write (default 200)")
    shapes.add_argument("--seed", type=_integer(0), default=0)
    shapes.add_argument("--size", type=_image_side, default=128, help="image side in pixels (default 128)")
    shapes.add_argument("-o", "--output", type=Path, required=True, help="dataset folder (images/ and instances.json)")
    shapes.set_defaults(run=_shapes)


def _add_plugins(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    plugins = verbs.add_parser("plugins", parents=[common], help="the custom TensorRT plugins")
    plugin_verbs = plugins.add_subparsers(dest="plugins_verb", required=True, metavar="<action>")
    build = plugin_verbs.add_parser("build", parents=[common], help="compile the CUDA kernels into the cached fatbin")
    build.add_argument("--force", action="store_true", help="rebuild even when the cached fatbin is current")
    build.set_defaults(run=_plugins_build)


def _add_check(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
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
        type=_integer(2, "the background and one class"),
        help="classes including background (default: from the weights)",
    )
    check.add_argument("--onnx", type=Path, help="the export (model.onnx)")
    check.add_argument("--deploy", type=Path, action="append", default=[], help="a deploy graph (FP32, FP16 or INT8); repeat for more")
    check.add_argument("--engine", type=Path, action="append", default=[], help="a TensorRT engine; repeat for more")
    check.add_argument("--images", type=Path, required=True, help="a folder of images, or a COCO folder (images/ and instances.json)")
    check.add_argument("--annotations", type=Path, help="COCO instances json (default: instances.json in --images, if any)")
    check.add_argument(
        "--max-ap-drop",
        type=_non_negative_number,
        default=0.5,
        metavar="POINTS",
        help="the most box or mask AP (0-100) a backend may lose against PyTorch on the same input (default 0.5)",
    )
    check.add_argument(
        "--max-tensor-error",
        type=_non_negative_number,
        default=1e-3,
        metavar="ERROR",
        help="the most an FP32 graph's dense tensors may differ from PyTorch's, relative to their magnitude (default 0.001)",
    )
    check.add_argument("--tensor-images", type=_integer(0), default=10, metavar="N", help="images whose tensors are compared (default 10)")
    check.add_argument("-o", "--output", type=Path, required=True, help="the report folder")
    check.set_defaults(run=_check)


def _add_demo(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    demo = verbs.add_parser(
        "demo",
        parents=[common],
        help="the whole pipeline on shapes-demo, offline: export, surgery, FP16 and INT8, infer, check",
    )
    demo.add_argument("-o", "--output", type=Path, default=Path("maskrt-demo"), help="where it all goes (default maskrt-demo)")
    demo.set_defaults(run=_demo)
def _add_infer(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    infer = verbs.add_parser("infer", parents=[common], help="run a deploy graph or engine on images, videos or a camera")
    infer.add_argument("model", type=Path, help="deploy graph (.onnx, ONNX Runtime) or engine (.engine, TensorRT)")
    infer.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders of images, globs, videos, camera indices")
    infer.add_argument("-o", "--output", type=Path, default=Path("infer"), help="output folder (default ./infer)")
    infer.add_argument("--score-threshold", type=_fraction, default=0.5, help="minimum score of a detection (default 0.5)")
    infer.add_argument("--annotations", type=Path, help="COCO instances json: results.json takes its image ids by file name")
    _add_backend_options(infer)
    infer.set_defaults(run=_infer)


def _add_bench(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    bench = verbs.add_parser("bench", parents=[common], help="latency and throughput of a deploy graph or engine, per stage")
    bench.add_argument("model", type=Path, help="deploy graph (.onnx, ONNX Runtime) or engine (.engine, TensorRT)")
    bench.add_argument("--batch", type=_integer(1), help="images per run (default and maximum: the model's batch)")
    bench.add_argument("--iterations", type=_integer(1), default=50, help="timed runs (default 50)")
    bench.add_argument("--warmup", type=_integer(0), default=5, help="untimed runs first (default 5)")
    bench.add_argument("--cuda-graph", action="store_true", help="TensorRT: replay the enqueue as a captured CUDA graph")
    bench.add_argument("--json", action="store_true", help="print the numbers as JSON on stdout")
    bench.add_argument("--image", type=Path, help="the image to run (default: a synthetic one at the model's input size)")
    _add_backend_options(bench)
    bench.set_defaults(run=_bench)


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="ONNX Runtime's provider (default: CUDA when installed)"
    )
    parser.add_argument("--threads", type=_integer(1), help="ONNX Runtime's intra-op threads (default: one per core)")


def _integer(minimum: int, why: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{f' ({why})' if why else ''}, got {value}")
        return value

    return parse


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def _fraction(text: str) -> float:
    """Thresholds: IoU and scores lie in [0, 1]."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _positive_number(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _image_side(text: str) -> int:
    from maskrt.calib.shapes import MIN_SIZE

    return _integer(MIN_SIZE)(text)


def _non_negative_number(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _size(text: str) -> tuple[int, int]:
    height, sep, width = text.lower().partition("x")
    if not sep or not height.isdigit() or not width.isdigit() or int(height) <= 0 or int(width) <= 0:
        raise argparse.ArgumentTypeError(f"expected HxW such as 800x1344, got '{text}'")
    return int(height), int(width)


def _export(args: argparse.Namespace, console: Console) -> None:
    from maskrt.convert.export import export_onnx

    export_onnx(
        args.model,
        args.output,
        weights=args.weights,
        num_classes=args.num_classes,
        input_size=args.input_size,
        batch=args.batch,
        opset=args.opset,
        seed=args.seed,
        console=console,
    )


def _convert(args: argparse.Namespace, console: Console) -> None:
    from maskrt.convert.build import BuildOptions
    from maskrt.convert.pipeline import CalibrationOptions, convert
    from maskrt.convert.settings import SettingsOverride

    convert(
        args.model,
        args.output,
        precision=args.precision,
        plugins=args.plugins,
        single_input=args.single_input,
        input_size=args.input_size,
        default_anchors=args.default_anchors,
        # Each detection-settings option's dest is the name of its SettingsOverride field.
        overrides=SettingsOverride(**{f.name: getattr(args, f.name) for f in fields(SettingsOverride)}),
        calibration=CalibrationOptions(
            images=args.calib_images,
            annotations=args.calib_annotations,
            count=args.calib_count,
            method=args.calib_method,
            calibrator=args.int8_calibrator,
        ),
        options=BuildOptions(
            workspace_gib=args.workspace,
            timing_cache=args.timing_cache,
            dla_core=args.dla_core,
            opt_level=args.opt_level,
            verbose=args.verbose,
        ),
        onnx_only=args.onnx_only,
        surgery_only=args.surgery_only,
        console=console,
    )


def _lint(args: argparse.Namespace, console: Console) -> None:
    from maskrt.convert.lint import lint_file

    lint_file(args.model, target=args.target, show_all=args.all, console=console)


def _shapes(args: argparse.Namespace, console: Console) -> None:
    from maskrt.calib.shapes import write_dataset

    write_dataset(args.output, count=args.count, seed=args.seed, size=args.size, console=console)


def _backend_options(args: argparse.Namespace) -> dict[str, object]:
    """Every backend option; open_backend hands each backend its own and refuses what one cannot do."""
    return {"device": args.device, "threads": args.threads, "cuda_graph": getattr(args, "cuda_graph", False), "verbose": args.verbose}


def _infer(args: argparse.Namespace, console: Console) -> None:
    from maskrt.runtime.infer import infer

    infer(args.model, args.inputs, args.output, args.score_threshold, args.annotations, console, **_backend_options(args))


def _bench(args: argparse.Namespace, console: Console) -> None:
    from maskrt.runtime.bench import bench

    bench(args.model, args.batch, args.iterations, args.warmup, args.json, console, args.image, **_backend_options(args))


def _plugins_build(args: argparse.Namespace, console: Console) -> None:
    from maskrt.plugins.build import build_fatbin

    path = build_fatbin(force=args.force, console=console)
    console.print(f"kernels: {path}")


def _check(args: argparse.Namespace, console: Console) -> int:
    from maskrt.calib.images import list_images
    from maskrt.check.accuracy import gate, open_backends, run_check
    from maskrt.check.report import print_summary, report_folder, write_report
    from maskrt.convert.export import class_names
    from maskrt.convert.models import SHAPES_DEMO, load_model

    if args.torchvision and args.weights is None:
        raise ValueError(f"--torchvision {args.torchvision}: give its weights with --weights FILE")
    if args.annotations is not None and not args.annotations.is_file():
        raise ValueError(f"{args.annotations}: file not found")
    inputs = [p for p in (args.onnx, *args.deploy, *args.engine, args.weights, args.images, args.annotations) if p]
    if any(args.output.resolve() == p.resolve() for p in inputs):
        raise ValueError(f"{args.output}: is one of the inputs; choose a new report folder")
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
    return 1 if failures else 3 if result.not_run else 0


def _demo(args: argparse.Namespace, console: Console) -> int:
    from maskrt.convert.demo import run_demo

    return run_demo(args.output, console)


if __name__ == "__main__":
    sys.exit(main())
