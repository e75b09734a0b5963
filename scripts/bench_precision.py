"""FP16 and INT8 deploy graphs against the FP32 one, measured side by side in one run, on a CPU.

    python scripts/bench_precision.py                  # everything: about 1.5 hours on 2 shared cores
    python scripts/bench_precision.py --skip-r50       # shapes-demo only: about 20 minutes

shapes-demo (`maskrt export --model shapes-demo`, then surgery), both plugin modes: COCO box and mask AP of the FP32,
FP16 and INT8 deploy graphs on the shapes val set (`maskrt shapes --count 200 --seed 1`), run by ONNX Runtime, with
the INT8 graph calibrated on train images (`maskrt shapes --seed 0`), never on val. Targets: FP16 within 0.1 AP and
INT8 within 0.3 AP of FP32, box and mask (COCO's 0-100 scale). Then the INT8 conversion again with the calibration
cache that the first one left: how many images each reads, and how long each takes.

ONNX Runtime's CPU provider has FP16 kernels for almost none of these ops and computes an FP16 region in FP32,
rounding only where the region ends, which flatters FP16. The FP16 graphs are therefore run as `fp16_rounding_model`
rewrites them: every op in FP32, every value the graph types FP16 rounded to FP16 where it is made, as a TensorRT
FP16 kernel stores it. The FP16 graph as ONNX Runtime runs it is shown too.

ResNet-50-FPN at 800x1344, its weights made to detect as the tests make them (tests/detection_support.py), maskrt
plugins: the FP16 and INT8 graphs' detections against the FP32 graph's on the same images (matched, missed, extra,
worst box IoU), and the PTQ time on --r50-calib-count images.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import onnx
import torch
from rich.console import Console
from rich.table import Table
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskrt.calib import calibration as calib
from maskrt.calib.shapes import write_dataset
from maskrt.check.coco_eval import CocoAP, coco_detections, evaluate
from maskrt.check.compare import compare_detections
from maskrt.contracts.records import OUTPUTS, read_deploy_record
from maskrt.convert.export import export_onnx
from maskrt.convert.precision import autocast_fp16, fp16_rounding_model, quantize_int8
from maskrt.convert.settings import DeployOptions, SettingsOverride
from maskrt.convert.surgery import surgery
from maskrt.plugins import cpu_session
from maskrt.runtime.preprocess import letterbox, read_rgb
from maskrt.runtime.progress import make_console, track

REPO = Path(__file__).resolve().parents[1]

FP16_TARGET, INT8_TARGET = 0.1, 0.3  # AP points, COCO's 0-100 scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val-count", type=int, default=200, help="shapes val images (seed 1), default 200")
    parser.add_argument("--calib-count", type=int, default=64, help="shapes train images (seed 0) to calibrate on, default 64")
    parser.add_argument("--calib-method", default="entropy", help="entropy (default), max or percentile")
    parser.add_argument("--skip-r50", action="store_true", help="shapes-demo only")
    parser.add_argument("--r50-images", type=int, default=2, help="ResNet-50-FPN images compared, default 2")
    parser.add_argument("--r50-calib-count", type=int, default=64, help="ResNet-50-FPN calibration images, default 64")
    parser.add_argument("--work", type=Path, help="keep the graphs and datasets here (default: a temporary folder)")
    args = parser.parse_args()
    console = make_console()
    with tempfile.TemporaryDirectory(prefix="maskrt-bench-precision-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        shapes_demo(work, args, console)
        if not args.skip_r50:
            resnet50_fpn(work, args, console)


@dataclass(frozen=True)
class Row:
    graph: str
    ap: CocoAP
    seconds: float  # making the graph


def shapes_demo(work: Path, args: argparse.Namespace, console: Console) -> None:
    export, val, train, cache = work / "shapes-demo.onnx", work / "shapes-val", work / "shapes-train", work / "calib-cache"
    if not export.exists():
        export_onnx("shapes-demo", export, console=quiet())
    if not val.exists():
        write_dataset(val, args.val_count, seed=1, console=console)
    if not train.exists():
        write_dataset(train, args.calib_count, seed=0, console=console)
    shutil.rmtree(cache, ignore_errors=True)
    table = Table(title=f"shapes-demo on {args.val_count} val images, ONNX Runtime (CPU)", title_justify="left")
    for column in ("plugins", "graph", "box AP", "mask AP", "Δ box", "Δ mask", "target", "made in"):
        table.add_column(column, justify="left" if column in ("plugins", "graph") else "right")
    conversions = Table(title="shapes-demo INT8 conversion (native plugins)", title_justify="left")
    for column in ("calibration cache", "images read", "calibration set", "conversion"):
        conversions.add_column(column, justify="left" if column == "calibration cache" else "right")
    for plugins in ("native", "maskrt"):
        fp32 = surgery(export, DeployOptions(plugins=plugins), quiet())
        started = time.perf_counter()
        fp16 = autocast_fp16(fp32)
        fp16_seconds = time.perf_counter() - started
        int8, int8_seconds = int8_conversion(fp32, train, cache, args, console, conversions if plugins == "native" else None, "empty")
        if plugins == "native":
            int8_conversion(fp32, train, cache, args, console, conversions, "warm")
        graphs = [("FP32", fp32, 0.0, None), ("FP16", fp16_rounding_model(fp16), fp16_seconds, FP16_TARGET)]
        if plugins == "native":
            graphs.append(("FP16, as ONNX Runtime runs it", fp16, fp16_seconds, None))
        graphs.append((f"INT8 ({args.calib_method}, {args.calib_count} images)", int8, int8_seconds, INT8_TARGET))
        reference: CocoAP | None = None
        for name, graph, seconds, target in graphs:
            console.print(f"{plugins} {name}: detecting {args.val_count} val images ...")
            ap = evaluate(val / "instances.json", detect_dataset(graph, val, console))
            reference = reference or ap
            box, mask = (ap.box - reference.box) * 100, (ap.mask - reference.mask) * 100
            verdict = "" if target is None else f"{target} {'met' if max(abs(box), abs(mask)) <= target else 'MISSED'}"
            made = f"{seconds:.1f} s" if seconds else ""
            table.add_row(plugins, name, f"{ap.box * 100:.2f}", f"{ap.mask * 100:.2f}", f"{box:+.2f}", f"{mask:+.2f}", verdict, made)
    console.print(table)
    console.print(conversions)


def int8_conversion(
    fp32: onnx.ModelProto,
    train: Path,
    cache: Path,
    args: argparse.Namespace,
    console: Console,
    conversions: Table | None,
    cache_state: str,
) -> tuple[onnx.ModelProto, float]:
    """The INT8 graph from calib's calibration set (through `cache`) and quantize_int8, and its time."""
    started = time.perf_counter()
    batches, reads = calibration_batches(train, args.calib_count, fp32, cache, console)
    calibration_seconds = time.perf_counter() - started
    int8 = quantize_int8(fp32, batches, args.calib_method, console)
    seconds = time.perf_counter() - started
    if conversions is not None:
        conversions.add_row(cache_state, str(reads), f"{calibration_seconds:.2f} s", f"{seconds:.1f} s")
    return int8, seconds


def calibration_batches(
    folder: Path, count: int, model: onnx.ModelProto, cache: Path, console: Console
) -> tuple[list[dict[str, np.ndarray]], int]:
    """calib's calibration set of `count` images of `folder` (sample seed 0) in the graph's batches, and how many
    image files it read (none when the cache has them)."""
    record = read_deploy_record(model)
    assert record is not None
    with mock.patch.object(calib, "read_rgb", wraps=read_rgb) as reads:
        images = calib.calibration_set(folder, count, 0, record.input_size, record.image_mean, cache_dir=cache, console=console)
    return calib.feeds(images, record.batch, [value.name for value in model.graph.input], console), reads.call_count


def detect_dataset(model: onnx.ModelProto, dataset: Path, console: Console) -> list[dict[str, object]]:
    """COCO results of a deploy graph on every image of a dataset folder: letterboxed in, boxes mapped back to the
    image, M×M masks pasted as torchvision pastes them."""
    record = read_deploy_record(model)
    assert record is not None
    session = cpu_session(model)
    names = {value.name for value in model.graph.input}
    images = json.loads((dataset / "instances.json").read_text(encoding="utf-8"))["images"]
    batch = record.batch
    results: list[dict[str, object]] = []
    for start in track(range(0, len(images), batch), "detect", console, unit="batches"):
        chunk = images[start : start + batch]
        boxes = [letterbox(read_rgb(dataset / "images" / image["file_name"]), record.input_size, record.image_mean) for image in chunk]
        boxes += [boxes[-1]] * (batch - len(chunk))  # a last partial batch is filled up; the copies are not read
        feeds = {"images": np.stack([image for image, _ in boxes]), "image_sizes": np.array([box.resized for _, box in boxes], np.int32)}
        outputs = dict(zip(OUTPUTS, session.run(list(OUTPUTS), {name: feeds[name] for name in names})))
        for b, (image, (_, box)) in enumerate(zip(chunk, boxes)):
            n = int(outputs["num_detections"][b, 0])
            found = box.to_original(outputs["boxes"][b, :n])
            masks = torch.from_numpy(outputs["masks"][b, :n, None].astype(np.float32))
            pasted = paste_masks_in_image(masks, torch.from_numpy(found), box.original)[:, 0].numpy()
            results += coco_detections(image["id"], found, outputs["scores"][b, :n], outputs["classes"][b, :n], pasted)
    return results


def resnet50_fpn(work: Path, args: argparse.Namespace, console: Console) -> None:
    sys.path.insert(0, str(REPO / "tests"))  # the tests' recipe for random weights that detect
    from detection_support import detecting_model, letterboxed_images


    size = (800, 1344)
    images = letterboxed_images(args.r50_images, *size, seed=0)
    export, weights, folder = work / "resnet50-fpn.onnx", work / "resnet50-fpn.pth", work / "resnet50-calib"
    console.print("ResNet-50-FPN at 800x1344: weights made to detect, export, surgery ...")
    model = detecting_model("maskrcnn_resnet50_fpn", 91, images)
    torch.save(model.state_dict(), weights)
    export_onnx("maskrcnn_resnet50_fpn", export, weights=weights, num_classes=91, input_size=size, console=quiet())
    del model
    fp32 = surgery(export, DeployOptions(overrides=SettingsOverride(box_score_thresh=0.5)), quiet())
    started = time.perf_counter()
    fp16 = autocast_fp16(fp32)
    fp16_seconds = time.perf_counter() - started
    # Calibration images like the compared ones (smooth colour fields with noise), written as PNG files for calib.
    if not folder.exists():
        (folder / "images").mkdir(parents=True)
        for index, image in enumerate(letterboxed_images(args.r50_calib_count, *size, seed=1)):
            cv2.imwrite(str(folder / "images" / f"{index:06d}.png"), image.transpose(1, 2, 0)[:, :, ::-1].astype(np.uint8))
    batches, _ = calibration_batches(folder, args.r50_calib_count, fp32, work / "calib-cache", console)
    started = time.perf_counter()
    int8 = quantize_int8(fp32, batches, args.calib_method, console)
    int8_seconds = time.perf_counter() - started
    del batches
    reference = run_each(fp32, images)
    table = Table(title=f"ResNet-50-FPN 800x1344 ({args.r50_images} images, maskrt plugins): against FP32", title_justify="left")
    for column in ("graph", "detections", "matched", "missed", "extra", "worst IoU", "worst score", "made in"):
        table.add_column(column, justify="left" if column == "graph" else "right")
    table.add_row("FP32", str(int(reference["num_detections"].sum())), "", "", "", "", "", "")
    for name, graph, seconds in (
        ("FP16", fp16_rounding_model(fp16), fp16_seconds),
        (f"INT8 ({args.calib_method}, {args.r50_calib_count} images)", int8, int8_seconds),
    ):
        compared = compare_detections(reference, run_each(graph, images), min_iou=0.5)
        matched = sum(image.matched for image in compared)
        extra = sum(len(image.extra) for image in compared)
        worst_iou = min(image.worst_iou for image in compared)
        worst_score = max(image.worst_score for image in compared)
        missed = sum(len(image.missing) for image in compared)
        table.add_row(name, str(matched + extra), str(matched), str(missed), str(extra), f"{worst_iou:.4f}", f"{worst_score:.4f}", f"{seconds:.1f} s")
    console.print(table)
    console.print("matched: same class and box IoU >= 0.5; the INT8 row's 'made in' is the PTQ time (calibration included)")


def run_each(model: onnx.ModelProto, images: np.ndarray) -> dict[str, np.ndarray]:
    """A batch-1 graph on each image, stacked as one batch."""
    session = cpu_session(model)
    names = [value.name for value in session.get_inputs()]
    # Each image fills the canvas: image_sizes (for graphs that read them) is the canvas' own size.
    feeds = [{"images": image[None], "image_sizes": np.array([image.shape[1:]], np.int32)} for image in images]
    outputs = [session.run(list(OUTPUTS), {name: feed[name] for name in names}) for feed in feeds]
    return {name: np.concatenate([output[i] for output in outputs]) for i, name in enumerate(OUTPUTS)}


def quiet() -> Console:
    """For steps whose own report (surgery's settings table) is not what this benchmark shows."""
    return Console(quiet=True)


if __name__ == "__main__":
    main()
