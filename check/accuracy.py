"""`maskrt check`: PyTorch, the export, deploy graphs and engines on the same images, compared at three levels.

Polygraphy's Comparator runs every backend image batch by image batch (streaming, so memory stays flat however many
images there are); after each batch:
- tensors: each backend's dense tensors against PyTorch's (check.tensors), on the first `tensor_images` images;
- detections: each image's detections in original pixels, masks pasted at the image's size (PyTorch's by torchvision,
  the backends' by the runtime's paste, as `maskrt infer` pastes them), paired with PyTorch's (check.compare);
- task: the COCO results of every backend go to a file, scored with pycocotools at the end against the annotations.
PyTorch is scored twice for the task: on the letterboxed input as the graphs see it (the reference of every
comparison), and as a user runs it, its own transform on the original image, which tells the letterbox's effect
on AP apart from the graph's.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from polygraphy.comparator import Comparator
from polygraphy.logger import G_LOGGER
from rich.console import Console
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskrt.calib.images import ImageEntry
from maskrt.check.coco_eval import MASK_THRESHOLD, CocoScores, load_ground_truth, score
from maskrt.check.compare import Agreement, Found, compare_image
from maskrt.check.runners import (
    CANVAS,
    IMAGE,
    Backend,
    FeedShape,
    GuardedRunner,
    ImageFeeds,
    LoadedImage,
    PyTorchRunner,
    deploy_detections,
    engine_backend,
    export_detections,
    onnx_backend,
    pytorch_backend,
)
from maskrt.check.tensors import RowLayout, TensorError, aligned, compare_tensors, first_jump, graph_images
from maskrt.check.torch_detections import image_tensor
from maskrt.contracts.errors import BadInput, TensorRTUnavailable
from maskrt.contracts.layers import CLASS_LOGITS
from maskrt.runtime.coco import coco_results
from maskrt.runtime.postprocess import paste_masks
from maskrt.runtime.progress import track

REFERENCE = "pytorch"
CANVAS_REFERENCE = "pytorch.canvas"
OWN_TRANSFORM = "pytorch.transform"
TENSOR_IMAGES = 10  # images whose dense tensors are compared (detections and AP use every image)
WORST_IMAGES = 4  # images shown side by side, where a backend disagrees most with PyTorch
FP32_TENSOR_ERROR = 1e-3  # the most relative error an FP32 graph's dense tensor may show against PyTorch
DESCRIPTIONS = {
    REFERENCE: "PyTorch on each letterboxed image, alone at its size in the letterbox: the reference",
    CANVAS_REFERENCE: "PyTorch on the whole letterboxed canvas, as the export and single-input graphs see it",
    OWN_TRANSFORM: "PyTorch as a user runs it: its own transform on the original image",
}


@dataclass
class BackendReport:
    """Everything `maskrt check` measured about one backend."""

    name: str
    description: str
    kind: str
    path: Path | None
    precision: str
    runtime: str  # what ran it, in words ("" where nothing could)
    reference: str = REFERENCE  # the PyTorch answers it is compared with
    tensors: list[TensorError] = field(default_factory=list)  # in data-flow order
    agreements: dict[str, Agreement] = field(default_factory=dict)  # by image file name, against its reference
    failures: dict[str, str] = field(default_factory=dict)  # by image file name (or "" for the whole backend)
    results_file: Path | None = None  # its COCO results, beside report.json
    scores: CocoScores | None = None
    seconds: float = 0.0  # inference time, summed over the feeds
    images: int = 0

    @property
    def jump(self) -> TensorError | None:
        return first_jump(self.tensors)


@dataclass(frozen=True)
class Worst:
    """An image where a backend disagrees most with PyTorch, for the side-by-side overlays."""

    disagreement: float
    file_name: str
    path: Path
    backend: str
    reference: list[dict[str, Any]]  # COCO results (RLE masks) of PyTorch and of the backend on this image
    candidate: list[dict[str, Any]]


@dataclass
class CheckResult:
    backends: list[BackendReport]  # the PyTorch answers first (the reference first of all), then the rest
    images: list[str]  # file names compared
    skipped: list[tuple[str, str]]  # unreadable images: (file name, why)
    unannotated: list[str]  # images compared that the annotations do not list
    annotations: Path | None
    image_ids: list[int]  # the images scored for AP
    tensor_images: int
    worst: list[Worst]
    not_run: list[str]  # backends that need what this machine lacks (TensorRT, a GPU)
    class_names: tuple[str, ...]
    seconds: float = 0.0

    @property
    def compared(self) -> list[BackendReport]:
        """The backends under test, without the PyTorch answers."""
        return [r for r in self.backends if r.kind != "pytorch"]


@dataclass(frozen=True)
class Backends:
    """The export, deploy graphs and engines to check, opened: dense tensors found, runners made."""

    opened: list[Backend]
    not_run: list[tuple[str, str]]  # engines this machine cannot run: (name, why)


def open_backends(
    onnx: Path | None, deploys: Sequence[Path], engines: Sequence[Path], console: Console | None = None
) -> Backends:
    """Each file as a Backend named by its file name; ValueError naming a file that is not a graph or engine."""
    paths = ([onnx] if onnx is not None else []) + list(deploys) + list(engines)
    if not paths:
        raise BadInput("nothing to compare with PyTorch: give --onnx, --deploy or --engine")
    names = _names(paths)
    opened, not_run = [], []
    for path in paths:
        if path in engines:
            try:
                opened.append(engine_backend(path, names[path], console))
            except TensorRTUnavailable as missing:
                not_run.append((names[path], str(missing)))
        else:
            opened.append(onnx_backend(path, names[path]))
    if not opened:  # only engines, none of which runs here: exit code 3, with nothing else to check
        raise TensorRTUnavailable(f"{not_run[0][1]}; nothing else was given to compare with PyTorch")
    if console is not None:
        for _, why in not_run:
            console.print(f"{why}; checking the other backends", style="yellow")
    return Backends(opened, not_run)


def run_check(
    model: torch.nn.Module,
    to_check: Backends,
    entries: Sequence[ImageEntry],
    annotations: Path | None,
    output: Path,
    class_names: Sequence[str] = (),
    tensor_images: int = TENSOR_IMAGES,
    console: Console | None = None,
) -> CheckResult:
    """Runs every backend on `entries` and writes each one's COCO results into the folder `output`."""
    started = time.perf_counter()
    own_sizes = (model.transform.min_size, model.transform.max_size)  # type: ignore[union-attr]
    backends, not_run = to_check.opened, to_check.not_run
    feed_shape = _common_feed_shape(backends, model)
    modes = [IMAGE] + ([CANVAS] if any(b.sees == CANVAS for b in backends) else [])
    pytorch = pytorch_backend(model, feed_shape, modes)
    pytorch_runner = pytorch.runner
    assert isinstance(pytorch_runner, PyTorchRunner)
    run = _Run(feed_shape.batch, _image_ids(entries, annotations), {})
    for name in [*(MODE_NAMES[mode] for mode in modes), OWN_TRANSFORM]:
        run.reports[name] = BackendReport(name, DESCRIPTIONS[name], "pytorch", None, "fp32", pytorch.runtime)
    for b in backends:
        run.reports[b.name] = BackendReport(b.name, b.description, b.kind, b.path, b.precision, b.runtime, MODE_NAMES[b.sees])
    feeds = ImageFeeds(entries, feed_shape)
    tensor_feeds = -(-tensor_images // feed_shape.batch)
    runners = [GuardedRunner(b.runner, b) for b in [pytorch, *backends]]
    if console is not None:
        console.print(f"checking {len(backends)} backend(s) against PyTorch on {len(entries)} images")
    with ExitStack() as stack:
        stack.enter_context(G_LOGGER.verbosity(G_LOGGER.CRITICAL))  # Polygraphy logs every comparison; check sums up
        run.writers = {name: stack.enter_context(_ResultsWriter(output / f"{name}.results.json")) for name in run.reports}
        stream = Comparator.run(runners, data_loader=feeds, streaming=True)
        unit = "images" if feed_shape.batch == 1 else "batches"
        for index, single in enumerate(track(stream, "check", console, total=-(-len(entries) // feed_shape.batch), unit=unit)):
            images = feeds.batches[index]
            run.compared += [image.entry.file_name for image in images]
            for name, results in single:
                report = run.reports[REFERENCE if name == pytorch.name else name]
                report.seconds += results[0].runtime or 0.0
                report.images += len(images)
            if index in pytorch.failures:
                for report in run.reports.values():
                    _fail(report, images, f"PyTorch failed on this image: {pytorch.failures[index]}")
                continue
            outputs = {name: dict(results[0].items()) for name, results in single}
            references = run.references(pytorch, outputs[pytorch.name], images)
            run.own_transform(model, own_sizes, images, references[IMAGE])
            if index < tensor_feeds:  # PyTorch's tensors of this feed, image by image, once for every backend
                reference_tensors = {mode: captured.images() for mode, captured in pytorch_runner.captured.items()}
            for backend in backends:
                if index in backend.failures:
                    _fail(run.reports[backend.name], images, backend.failures[index])
                    continue
                agreements = run.detections(backend, outputs[backend.name], images, references[backend.sees], index)
                if index < tensor_feeds and backend.dense:
                    _compare_feed_tensors(
                        backend, outputs[backend.name], reference_tensors[backend.sees], agreements, run.reports[backend.name], feed_shape.batch
                    )
            feeds.release(index)
    order = {role: i for i, role in enumerate(t.role for b in backends for t in b.dense)}
    for report in run.reports.values():
        report.tensors.sort(key=lambda e: order.get(e.role, len(order)))
        report.results_file = run.writers[report.name].path
    for name, why in not_run:
        run.reports[name] = BackendReport(name, "TensorRT engine", "engine", None, "", "")
        run.reports[name].failures[""] = why
    result = CheckResult(
        backends=list(run.reports.values()),
        images=run.compared,
        skipped=[(entry.file_name, why) for entry, why in feeds.skipped],
        unannotated=[name for name in run.compared if annotations is not None and name not in run.ids],
        annotations=annotations,
        image_ids=sorted(run.ids[name] for name in run.compared if name in run.ids),
        tensor_images=min(tensor_images, len(run.compared)),
        worst=[w for _, _, w in sorted(run.worst, key=lambda kept: kept[0], reverse=True)],
        not_run=[name for name, _ in not_run],
        class_names=tuple(class_names),
    )
    if annotations is not None:
        _score(result, annotations, console)
    result.seconds = time.perf_counter() - started
    return result


MODE_NAMES = {IMAGE: REFERENCE, CANVAS: CANVAS_REFERENCE}


@dataclass
class _Run:
    """What a check gathers feed by feed: each backend's report, its COCO results file, the worst images."""

    batch: int
    ids: dict[str, int]  # COCO image id by file name
    reports: dict[str, BackendReport]
    writers: dict[str, _ResultsWriter] = field(default_factory=dict)
    worst: list[tuple[float, int, Worst]] = field(default_factory=list)
    compared: list[str] = field(default_factory=list)

    def references(self, pytorch: Backend, outputs: dict[str, np.ndarray], images: list[LoadedImage]) -> dict[str, list[Found]]:
        """PyTorch's answers in original pixels for each way it sees the images; the canvas' compared with the
        image's."""
        runner = pytorch.runner
        assert isinstance(runner, PyTorchRunner)
        found = {}
        for mode in runner.modes:
            answer = {key.removeprefix(f"{mode}:"): value for key, value in outputs.items() if key.startswith(f"{mode}:")}
            answers = deploy_detections(answer, self.batch)
            found[mode] = [_in_original(f, image, by_torchvision=True) for f, image in zip(answers, images)]
        for mode in runner.modes:
            report = self.reports[MODE_NAMES[mode]]
            for image, answer_found, reference in zip(images, found[mode], found[IMAGE]):
                if mode != IMAGE:
                    report.agreements[image.entry.file_name] = compare_image(reference, answer_found)
                self.writers[report.name].add(_coco_results(answer_found, self.ids.get(image.entry.file_name)))
        return found

    def own_transform(self, model: torch.nn.Module, sizes: tuple[Any, Any], images: list[LoadedImage], references: list[Found]) -> None:
        report = self.reports[OWN_TRANSFORM]
        for image, found, reference in zip(images, _own_transform(model, sizes, images, report), references):
            report.agreements[image.entry.file_name] = compare_image(reference, found)
            self.writers[OWN_TRANSFORM].add(_coco_results(found, self.ids.get(image.entry.file_name)))

    def detections(
        self, backend: Backend, answer: dict[str, np.ndarray], images: list[LoadedImage], references: list[Found], index: int
    ) -> list[Agreement]:
        """One feed's detections of `backend`, in original pixels: paired with PyTorch's, into its results file."""
        report = self.reports[backend.name]
        found = export_detections(answer, backend) if backend.kind == "export" else deploy_detections(answer, self.batch)
        agreements = []
        for image, detections, reference in zip(images, found, references):
            in_original = _in_original(detections, image)
            agreement = compare_image(reference, in_original)
            agreements.append(agreement)
            report.agreements[image.entry.file_name] = agreement
            self.writers[backend.name].add(_coco_results(in_original, self.ids.get(image.entry.file_name)))
            if _worth_keeping(self.worst, agreement.disagreement, image.entry.file_name):
                kept = Worst(
                    agreement.disagreement,
                    image.entry.file_name,
                    image.entry.path,
                    backend.name,
                    _coco_results(reference, 0),
                    _coco_results(in_original, 0),
                )
                _keep_worst(self.worst, (agreement.disagreement, index, kept))
        return agreements


def _names(paths: Sequence[Path]) -> dict[Path, str]:
    """Each backend's name: its file name, with its folder's name in front where two files share a name."""
    names: dict[Path, str] = {}
    for path in paths:
        name = path.name if [p.name for p in paths].count(path.name) == 1 else f"{path.parent.name}.{path.name}"
        while name in names.values() or name in (REFERENCE, CANVAS_REFERENCE, OWN_TRANSFORM):
            name = f"{name}.{len(names) + 1}"
        names.setdefault(path, name)
    return names


def _common_feed_shape(backends: list[Backend], model: torch.nn.Module) -> FeedShape:
    first = next(b for b in backends if b.feed_shape is not None)
    assert first.feed_shape is not None
    for backend in backends:
        if backend.feed_shape is not None and (backend.feed_shape.batch, backend.feed_shape.input_size) != (
            first.feed_shape.batch,
            first.feed_shape.input_size,
        ):
            size = "x".join(str(s) for s in backend.feed_shape.input_size)
            expected = "x".join(str(s) for s in first.feed_shape.input_size)
            raise BadInput(
                f"{backend.path}: takes batch {backend.feed_shape.batch} at {size}, but {first.path} takes batch "
                f"{first.feed_shape.batch} at {expected}; compare graphs made from the same export"
            )
    mean = tuple(float(m) for m in model.transform.image_mean)  # type: ignore[union-attr]
    return FeedShape(first.feed_shape.batch, first.feed_shape.input_size, mean)


def _image_ids(entries: Sequence[ImageEntry], annotations: Path | None) -> dict[str, int]:
    """COCO image ids: from the annotations, or the 0-based input order without them."""
    if annotations is None:
        return {entry.file_name: i for i, entry in enumerate(entries)}
    return {entry.file_name: entry.image_id for entry in entries if entry.image_id is not None}


def _fail(report: BackendReport, images: list[LoadedImage], message: str) -> None:
    for image in images:
        report.failures[image.entry.file_name] = message


def _worth_keeping(worst: list[tuple[float, int, Worst]], disagreement: float, file_name: str) -> bool:
    if disagreement <= 0:
        return False
    same = [value for value, _, kept in worst if kept.file_name == file_name]
    if same:
        return disagreement > same[0]
    return len(worst) < WORST_IMAGES or disagreement > worst[0][0]


def _keep_worst(worst: list[tuple[float, int, Worst]], entry: tuple[float, int, Worst]) -> None:
    """Keeps the WORST_IMAGES images (each once, with the backend that disagrees most there) where the answers
    differ most from PyTorch's: a heap, least disagreement first."""
    worst[:] = [kept for kept in worst if kept[2].file_name != entry[2].file_name]
    heapq.heapify(worst)
    if len(worst) < WORST_IMAGES:
        heapq.heappush(worst, entry)
    else:
        heapq.heapreplace(worst, entry)


def _in_original(found: dict[str, np.ndarray], image: LoadedImage, by_torchvision: bool = False) -> Found:
    """Detections in letterboxed pixels with M×M masks → original pixels, masks pasted at the image's size: PyTorch's
    by torchvision's paste_masks_in_image, a backend's by the runtime's paste, as `maskrt infer` pastes them."""
    boxes = image.box.to_original(found["boxes"])
    if not by_torchvision:
        masks = paste_masks(found["masks"], boxes, image.box.original, MASK_THRESHOLD)
        return Found(boxes, found["scores"], found["classes"], masks)
    masks = paste_masks_in_image(
        torch.from_numpy(found["masks"][:, None]), torch.from_numpy(boxes), image.box.original
    )[:, 0].numpy()
    return Found(boxes, found["scores"], found["classes"], masks > MASK_THRESHOLD)


def _own_transform(model: torch.nn.Module, sizes: tuple[Any, Any], images: list[LoadedImage], report: BackendReport) -> list[Found]:
    """PyTorch as a user runs it: the original images, 0..1, through the model's own transform."""
    tensors = [image_tensor(image.rgb) for image in images]
    started = time.perf_counter()
    with _transform_sizes(model, sizes), torch.no_grad():
        outputs = model(tensors)
    report.seconds += time.perf_counter() - started
    report.images += len(images)
    return [
        Found(o["boxes"].numpy(), o["scores"].numpy(), o["labels"].numpy(), o["masks"][:, 0].numpy() > MASK_THRESHOLD)
        for o in outputs
    ]


@contextmanager
def _transform_sizes(model: torch.nn.Module, sizes: tuple[Any, Any]) -> Iterator[None]:
    transform = model.transform  # type: ignore[union-attr]
    saved = (transform.min_size, transform.max_size)
    transform.min_size, transform.max_size = sizes
    try:
        yield
    finally:
        transform.min_size, transform.max_size = saved


def _coco_results(found: Found, image_id: int | None) -> list[dict[str, Any]]:
    if image_id is None:
        return []
    return coco_results(image_id, found.boxes, found.scores, found.classes, found.masks)


def _compare_feed_tensors(
    backend: Backend,
    answer: dict[str, np.ndarray],
    reference: list[dict[str, np.ndarray]],
    agreements: list[Agreement],
    report: BackendReport,
    batch: int,
) -> None:
    """One feed's dense tensors of `backend` against PyTorch's, image by image."""
    values = {t.role: answer[t.name] for t in backend.dense if t.name in answer}
    if backend.kind == "export":
        counts = [len(answer[f"detections.{b}.labels"]) for b in range(batch)]
        layout = RowLayout(None, [int(v) for v in np.concatenate([[0], np.cumsum(counts)[:-1]])])
    else:  # every image padded to the same number of proposals and of detections
        proposals, detections = len(values.get(CLASS_LOGITS, ())) // batch, answer["masks"].shape[1]
        layout = RowLayout([b * proposals for b in range(batch)], [b * detections for b in range(batch)])
    pairs: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for ours, theirs, agreement in zip(reference, graph_images(values, layout, batch), agreements):
        for role, (left, right) in aligned(ours, theirs, agreement.pairs).items():
            pairs.setdefault(role, ([], []))
            pairs[role][0].append(left)
            pairs[role][1].append(right)
    errors = {e.role: e for e in report.tensors}
    compare_tensors(pairs, errors)
    report.tensors = list(errors.values())


def _score(result: CheckResult, annotations: Path, console: Console | None) -> None:
    ground_truth = load_ground_truth(annotations)
    scored = [r for r in result.backends if r.results_file is not None and "" not in r.failures]
    for report in track(scored, "COCO AP", console, unit="backends"):
        assert report.results_file is not None
        detections = json.loads(report.results_file.read_text(encoding="utf-8"))
        report.scores = score(ground_truth, detections, result.image_ids)


class _ResultsWriter:
    """A COCO results file written one image at a time, so no backend's detections pile up in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def __enter__(self) -> _ResultsWriter:
        self.file = self.path.open("w", encoding="utf-8")
        self.file.write("[")
        return self

    def add(self, results: list[dict[str, Any]]) -> None:
        for item in results:
            self.file.write(("," if self.count else "") + json.dumps(item))
            self.count += 1

    def __exit__(self, *exc: object) -> None:
        self.file.write("]\n")
        self.file.close()


def gate(result: CheckResult, max_ap_drop: float, max_tensor_error: float = FP32_TENSOR_ERROR) -> list[str]:
    """What fails the check, one sentence each: a backend that could not run or failed on an image, an FP32 graph
    whose dense tensors differ from PyTorch's by more than `max_tensor_error` (FP16 and INT8 differ by design: their
    AP is what counts), and box or mask AP more than `max_ap_drop` points (0-100) below PyTorch's on the same
    letterboxed input. The letterbox's own effect (PyTorch with its own transform) is reported, not gated."""
    failures = []
    reference = result.backends[0]
    for report in result.compared:
        if report.name in result.not_run:
            continue
        if "" in report.failures:
            failures.append(f"{report.name}: could not run: {report.failures['']}")
            continue
        if report.failures:
            first, why = next(iter(report.failures.items()))
            failures.append(f"{report.name}: failed on {len(report.failures)} image(s), first {first}: {why}")
        if report.precision == "fp32":
            over = [e for e in report.tensors if e.relative > max_tensor_error]
            if over:
                jump = report.jump
                first = jump if jump is not None and jump.relative > max_tensor_error else over[0]
                worst = max(over, key=lambda e: e.relative)
                also = f"; the worst, {worst.role}: {worst.relative:.2g}" if worst is not first else ""
                failures.append(
                    f"{report.name}: answers differently from PyTorch from {first.role} on: its error there is "
                    f"{first.relative:.2g}, an FP32 graph stays within {max_tensor_error:g}{also}"
                )
        if report.scores is not None and reference.scores is not None:
            for kind in ("box", "mask"):
                ours, theirs = getattr(report.scores, kind)["AP"], getattr(reference.scores, kind)["AP"]
                if ours is not None and theirs is not None and (theirs - ours) * 100 > max_ap_drop:
                    failures.append(
                        f"{report.name}: {kind} AP {ours * 100:.2f} is {(theirs - ours) * 100:.2f} points below "
                        f"PyTorch's {theirs * 100:.2f} (--max-ap-drop {max_ap_drop:g})"
                    )
    return failures
