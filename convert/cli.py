"""maskrt's command line: `maskrt <verb> ...`, and `trt-convert` as the short name of `maskrt convert`.

Every verb reports a bad input as one line on stderr naming the file and what is wrong, and exits with 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from rich.console import Console
from rich.text import Text

from maskrt.runtime.progress import make_console

EXIT_BAD_INPUT = 2
# What conversion needs and `pip install maskrt` (the runtime) leaves out.
CONVERSION_PACKAGES = ("torch", "torchvision", "onnx_graphsurgeon", "polygraphy", "safetensors", "modelopt")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    console = make_console()
    started = time.perf_counter()
    try:
        args.run(args, console)
    except (ValueError, OSError) as error:
        if args.verbose:
            raise
        console.print(Text.assemble((f"maskrt {args.verb}: error: ", "bold red"), str(error)), soft_wrap=True)
        return EXIT_BAD_INPUT
    except ModuleNotFoundError as error:
        if args.verbose or (error.name or "").split(".")[0] not in CONVERSION_PACKAGES:
            raise
        missing = f"needs {error.name}, which the runtime install leaves out: pip install 'maskrt[convert]'"
        console.print(Text.assemble((f"maskrt {args.verb}: error: ", "bold red"), missing), soft_wrap=True)
        return EXIT_BAD_INPUT
    console.print(f"maskrt {args.verb}: done in {time.perf_counter() - started:.1f} s", style="dim")
    return 0


def trt_convert(argv: Sequence[str] | None = None) -> int:
    return main(["convert", *(sys.argv[1:] if argv is None else argv)])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskrt", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="full tracebacks and TensorRT's own log")
    for add_verb in (_add_export, _add_convert, _add_lint, _add_shapes, _add_plugins, _add_infer, _add_bench):
        add_verb(verbs, common)
    return parser


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
    export.add_argument("--num-classes", type=int, help="classes including background (default: from the weights, else 91)")
    export.add_argument(
        "--input-size", type=_size, metavar="HxW", help="default 800x1344 (shapes-demo: 128x128, its training size)"
    )
    export.add_argument("--batch", type=int, default=1, help="images per inference (default 1)")
    export.add_argument("--opset", type=int, default=17)
    export.add_argument("--seed", type=int, default=0, help="seed of the random weights used when --weights is not given")
    export.add_argument("-o", "--output", type=Path, required=True)
    export.set_defaults(run=_export)


def _add_convert(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    convert = verbs.add_parser("convert", parents=[common], help="ONNX export → deploy graph (surgery) → TensorRT engine")
    convert.add_argument("model", type=Path, help="ONNX from `maskrt export` or torch.onnx.export(model, ...)")
    convert.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the engine (default: model.engine beside the export; the deploy graph goes beside it as "
        "<name>.deploy.onnx), or with --surgery-only the deploy graph (default: deploy.onnx beside the export)",
    )
    convert.add_argument("--surgery-only", action="store_true", help="write the deploy graph and stop")
    convert.add_argument("--precision", choices=["fp32", "fp16"], default="fp16", help="engine precision (default fp16)")
    convert.add_argument("--workspace", type=float, default=4.0, metavar="GiB", help="TensorRT's workspace (default 4)")
    convert.add_argument(
        "--plugins",
        choices=["maskrt", "native"],
        default="maskrt",
        help="maskrt: custom RoIAlign/NMS plugins (default); native: standard ONNX ops only (trtexec, DeepStream, Triton)",
    )
    convert.add_argument("--input-size", type=_size, metavar="HxW", help="fixes the size of a dynamic-size export")
    convert.add_argument(
        "--single-input",
        action="store_true",
        help="no image_sizes input: boxes are clipped to the whole canvas, for runtimes that feed one tensor (DeepStream)",
    )
    settings = convert.add_argument_group("detection settings (default: the model's own)")
    settings.add_argument("--rpn-pre-nms-top-n", type=int, help="proposals kept per FPN level before NMS")
    settings.add_argument("--rpn-post-nms-top-n", type=int, help="proposals kept per image after NMS")
    settings.add_argument("--rpn-nms-thresh", type=float, help="IoU threshold of the proposal NMS")
    settings.add_argument("--rpn-score-thresh", type=float, help="minimum objectness of a proposal")
    settings.add_argument("--box-score-thresh", type=float, help="minimum class score of a detection")
    settings.add_argument("--box-nms-thresh", type=float, help="IoU threshold of the per-class detection NMS")
    settings.add_argument("--detections-per-img", type=int, help="K: detections kept per image")
    convert.set_defaults(run=_convert)


def _add_lint(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    lint = verbs.add_parser("lint", parents=[common], help="check that a deploy graph is TensorRT-ready")
    lint.add_argument("model", type=Path)
    lint.set_defaults(run=_lint)


def _add_shapes(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    shapes = verbs.add_parser("shapes", parents=[common], help="write the synthetic COCO-format shapes dataset")
    shapes.add_argument("--count", type=int, default=200, help="images to write (default 200)")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    shapes.add_argument("-o", "--output", type=Path, required=True, help="dataset folder (images/ and instances.json)")
    shapes.set_defaults(run=_shapes)


def _add_plugins(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    plugins = verbs.add_parser("plugins", parents=[common], help="the custom TensorRT plugins")
    plugin_verbs = plugins.add_subparsers(dest="plugins_verb", required=True, metavar="<action>")
    build = plugin_verbs.add_parser("build", parents=[common], help="compile the CUDA kernels into the cached fatbin")
    build.add_argument("--force", action="store_true", help="rebuild even when the cached fatbin is current")
    build.set_defaults(run=_plugins_build)


def _add_infer(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    infer = verbs.add_parser("infer", parents=[common], help="run a deploy graph or engine on images, videos or a camera")
    infer.add_argument("model", type=Path, help="deploy graph (.onnx, ONNX Runtime) or engine (.engine, TensorRT)")
    infer.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders of images, globs, videos, camera indices")
    infer.add_argument("-o", "--output", type=Path, default=Path("infer"), help="output folder (default ./infer)")
    infer.add_argument("--score-threshold", type=float, default=0.5, help="minimum score of a detection (default 0.5)")
    infer.add_argument("--annotations", type=Path, help="COCO instances json: results.json takes its image ids by file name")
    _add_backend_options(infer)
    infer.set_defaults(run=_infer)


def _add_bench(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    bench = verbs.add_parser("bench", parents=[common], help="latency and throughput of a deploy graph or engine, per stage")
    bench.add_argument("model", type=Path, help="deploy graph (.onnx, ONNX Runtime) or engine (.engine, TensorRT)")
    bench.add_argument("--batch", type=int, help="images per run (default and maximum: the model's batch)")
    bench.add_argument("--iterations", type=int, default=50, help="timed runs (default 50)")
    bench.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    bench.add_argument("--cuda-graph", action="store_true", help="TensorRT: replay the enqueue as a captured CUDA graph")
    bench.add_argument("--json", action="store_true", help="print the numbers as JSON on stdout")
    bench.add_argument("--image", type=Path, help="the image to run (default: a synthetic one at the model's input size)")
    _add_backend_options(bench)
    bench.set_defaults(run=_bench)


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="ONNX Runtime's provider (default: CUDA when installed)"
    )
    parser.add_argument("--threads", type=int, help="ONNX Runtime's intra-op threads (default: one per core)")


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
    from maskrt.convert.settings import SettingsOverride
    from maskrt.convert.surgery import surgery_to_file

    if args.surgery_only:
        deploy = args.output or args.model.with_name("deploy.onnx")
    else:
        engine = args.output or args.model.with_suffix(".engine")
        deploy = engine.with_name(f"{engine.stem}.deploy.onnx")
    # Each detection-settings option's dest is the name of its SettingsOverride field.
    overrides = SettingsOverride(**{f.name: getattr(args, f.name) for f in fields(SettingsOverride)})
    surgery_to_file(
        args.model, deploy, plugins=args.plugins, input_size=args.input_size, overrides=overrides, console=console,
        single_input=args.single_input,
    )
    if not args.surgery_only:
        from maskrt.convert.build import build_engine

        build_engine(deploy, engine, args.precision, args.workspace, args.verbose, console)


def _lint(args: argparse.Namespace, console: Console) -> None:
    from maskrt.convert.lint import lint_file

    lint_file(args.model, console=console)


def _shapes(args: argparse.Namespace, console: Console) -> None:
    from maskrt.calib.shapes import write_dataset

    write_dataset(args.output, count=args.count, seed=args.seed, size=args.size, console=console)


def _backend_options(args: argparse.Namespace) -> dict[str, object]:
    """The backend's options: ONNX Runtime's device and threads, or an engine's CUDA graph."""
    if args.model.suffix == ".engine":
        return {"cuda_graph": True} if getattr(args, "cuda_graph", False) else {}
    if getattr(args, "cuda_graph", False):
        raise ValueError(f"{args.model}: --cuda-graph replays a TensorRT engine's enqueue; this is not an engine")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    return {"device": args.device, "threads": args.threads}


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


if __name__ == "__main__":
    sys.exit(main())
