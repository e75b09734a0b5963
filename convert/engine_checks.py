"""`maskrt doctor`'s engines: shapes-demo converted by trt-convert (convert/pipeline.convert) in every precision and
plugin mode the installed TensorRT builds, each engine run through the Predictor on shapes-demo's val images and held
to ONNX Runtime's answers on the deploy graph it was built from: its detections matched one by one, and its box and
mask AP within the points `maskrt check` allows by default (the demo's gate).

Needs the conversion install (PyTorch exports shapes-demo), TensorRT with its builder and a GPU; the caller says what
is missing before calling. A failure of one engine is its check's failure, the others are still built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from maskrt.calib.images import read_image_ids
from maskrt.calib.shapes import write_dataset
from maskrt.check.coco_eval import load_ground_truth, score
from maskrt.check.compare import Found, compare_image
from maskrt.contracts.errors import BadInput, TensorRTUnavailable
from maskrt.contracts.precisions import PRECISIONS
from maskrt.contracts.tensorrt import TensorRT
from maskrt.convert.export import export_onnx
from maskrt.convert.models import SHAPES_DEMO
from maskrt.convert.pipeline import CalibrationOptions, convert
from maskrt.convert.settings import DeployOptions
from maskrt.runtime.coco import coco_results
from maskrt.runtime.doctor import Check
from maskrt.runtime.predictor import Detections, Predictor

if TYPE_CHECKING:
    from pycocotools.coco import COCO

# The demo's data: the first half of shapes-demo's val set (seed 1) and calibration images of its training distribution
# (seed 0), never the val set (cli/demo.py).
VAL_IMAGES = 100
VAL_SEED = 1
CALIBRATION_IMAGES = 64
CALIBRATION_SEED = 0
MAX_AP_DROP = 0.5  # points of box or mask AP (0-100): `maskrt check --max-ap-drop`'s default, the demo's gate
MATCHED_SCORE = 0.5  # an FP32 engine matches every detection scoring at least this, and adds none
SCORE_THRESHOLD = 0.0  # all the model's detections (its own box score threshold applies), as COCO AP counts them


@dataclass(frozen=True)
class Answers:
    """One backend's detections on the val images, by image, with the images' ids in the ground truth."""

    detections: list[Detections]
    image_ids: list[int]


def engine_checks(tensorrt: TensorRT, folder: Path, console: Console) -> list[Check]:
    """One check per engine (plugin mode x precision) this TensorRT builds, made and compared in `folder`."""
    val, train = folder / "shapes-val", folder / "shapes-train"
    write_dataset(val, VAL_IMAGES, VAL_SEED)
    write_dataset(train, CALIBRATION_IMAGES, CALIBRATION_SEED)
    images = sorted((val / "images").iterdir())
    ids = read_image_ids(val / "instances.json")
    exported = folder / "model.onnx"
    export_onnx(SHAPES_DEMO, exported, console=console)
    checks = []
    for plugins in tensorrt.plugin_modes:
        deploy = convert(exported, folder / f"deploy.{plugins}.onnx", graph=DeployOptions(plugins=plugins), surgery_only=True, console=console)
        reference = run_predictor(Predictor(deploy, score_threshold=SCORE_THRESHOLD, device="cpu"), images, ids)
        for precision in PRECISIONS:
            name = f"{precision.upper()} engine, --plugins {plugins}"
            engine = folder / f"{plugins}-{precision}" / "model.engine"
            calibration = CalibrationOptions(images=train, count=CALIBRATION_IMAGES)
            try:
                convert(deploy, engine, precision=precision, calibration=calibration, console=console)
                candidate = run_predictor(Predictor(engine, score_threshold=SCORE_THRESHOLD), images, ids)
            except (BadInput, TensorRTUnavailable, OSError, RuntimeError) as error:
                checks.append(Check(name, False, " ".join(str(error).split())[:400]))
                continue
            checks.append(compare_answers(name, precision, reference, candidate, val / "instances.json"))
    return checks


def run_predictor(predictor: Predictor, images: Sequence[Path], ids: dict[str, int]) -> Answers:
    found = [predictor(image) for image in images]
    return Answers([d for d in found if isinstance(d, Detections)], [ids[image.name] for image in images])


def compare_answers(name: str, precision: str, reference: Answers, candidate: Answers, instances: Path) -> Check:
    """`candidate` against ONNX Runtime's `reference` on the same images: passed when its box and mask AP are within
    MAX_AP_DROP points of the reference's and, for FP32, every detection scoring at least MATCHED_SCORE in either
    has its match in the other (same class, box IoU >= 0.5)."""
    confident_missed = confident_extra = matched = total = 0
    for mine, theirs in zip(candidate.detections, reference.detections):
        agreement = compare_image(_found(theirs), _found(mine))
        matched += agreement.matched
        total += len(theirs)
        paired_reference = {i for i, _ in agreement.pairs}
        paired_candidate = {j for _, j in agreement.pairs}
        confident_missed += sum(1 for i, s in enumerate(theirs.scores) if s >= MATCHED_SCORE and i not in paired_reference)
        confident_extra += sum(1 for j, s in enumerate(mine.scores) if s >= MATCHED_SCORE and j not in paired_candidate)
    ground_truth = load_ground_truth(instances)
    changes = {  # candidate's AP less the reference's, in points
        kind: (mine - theirs) * 100
        for kind, theirs, mine in zip(("box", "mask"), _ap(ground_truth, reference), _ap(ground_truth, candidate))
    }
    problems = [f"{kind} AP {-change:.2f} points below ONNX Runtime's" for kind, change in changes.items() if -change > MAX_AP_DROP]
    if precision == "fp32" and (confident_missed or confident_extra):
        problems.append(f"{confident_missed} detections scoring >= {MATCHED_SCORE} missed and {confident_extra} added")
    detail = (
        f"{matched} of {total} detections matched on {len(reference.detections)} images; box AP {changes['box']:+.2f}, "
        f"mask AP {changes['mask']:+.2f} points against ONNX Runtime (at most -{MAX_AP_DROP})"
    )
    return Check(name, not problems, detail + "".join(f"; {problem}" for problem in problems))


def _found(detections: Detections) -> Found:
    return Found(detections.boxes, detections.scores, detections.labels, detections.masks)


def _ap(ground_truth: COCO, answers: Answers) -> tuple[float, float]:
    results = [
        result
        for detections, image_id in zip(answers.detections, answers.image_ids)
        for result in coco_results(image_id, detections.boxes, detections.scores, detections.labels, detections.masks)
    ]
    scores = score(ground_truth, results, answers.image_ids)
    return scores.box["AP"] or 0.0, scores.mask["AP"] or 0.0
