"""The report of `maskrt check`: report.json (every number in the tables), report.md, and index.html, one
self-contained page (tables, and matplotlib plots embedded as PNG) that opens anywhere without a network."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import matplotlib
import numpy as np
from matplotlib.figure import Figure
from pycocotools import mask as coco_mask
from rich.console import Console
from rich.table import Table

from maskrt.check.accuracy import OWN_TRANSFORM, REFERENCE, BackendReport, CheckResult
from maskrt.check.coco_eval import STATS
from maskrt.check.tensors import HISTOGRAM_EDGES
from maskrt.contracts.errors import BadInput
from maskrt.contracts.files import check_writable, write_atomically
from maskrt.runtime.preprocess import read_rgb

DPI = 100
OVERLAY_SCORE = 0.5  # detections drawn in the side-by-side overlays
COLOURS = matplotlib.colormaps["tab10"].colors  # type: ignore[attr-defined]


def report_data(result: CheckResult, failures: Sequence[str], max_ap_drop: float, max_tensor_error: float) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready data."""
    reference = result.backends[0]
    own = next(r for r in result.backends if r.name == OWN_TRANSFORM)
    data: dict[str, Any] = {
        "images": {
            "compared": len(result.images),
            "skipped": [{"image": name, "why": why} for name, why in result.skipped],
            "annotations": str(result.annotations) if result.annotations else None,
            "scored": len(result.image_ids),
            "scored_image_ids": result.image_ids,
            "not_annotated": result.unannotated,
        },
        "reference": REFERENCE,
        "backends": [_backend(report) for report in result.backends],
        "tensors": {
            "images": result.tensor_images,
            "error": "99th percentile of |error| / mean |PyTorch's value|, worst image",
            "backends": {r.name: _tensors(r) for r in result.compared if r.tensors},
        },
        "detections": {
            "match": "same class and box IoU >= 0.5, PyTorch's detections best score first",
            "backends": {r.name: _detections(r) for r in result.backends if r.agreements},
        },
        "gate": {
            "max_ap_drop": max_ap_drop,
            "max_tensor_error_fp32": max_tensor_error,
            "passed": not failures,
            "failures": list(failures),
            "not_run": result.not_run,
        },
        "seconds": round(result.seconds, 1),
    }
    if reference.scores is not None:
        data["task"] = {
            "scale": "AP points, 0-100",
            "backends": {
                r.name: _task(r, reference, own) for r in result.backends if r.scores is not None
            },
        }
    return data


def _backend(report: BackendReport) -> dict[str, Any]:
    return {
        "name": report.name,
        "description": report.description,
        "path": str(report.path) if report.path else None,
        "precision": report.precision,
        "runtime": report.runtime,
        "images": report.images,
        "ms_per_image": round(1000 * report.seconds / report.images, 1) if report.images else None,
        "failures": [{"image": image or None, "why": why} for image, why in report.failures.items()],
        "results_file": report.results_file.name if report.results_file else None,
    }


def _tensors(report: BackendReport) -> dict[str, Any]:
    jump = report.jump
    return {
        "first_jump": jump.role if jump is not None else None,
        "tensors": [
            {
                "tensor": e.role,
                "error": e.relative,
                "max_abs": e.max_abs,
                "mean_abs": e.mean_abs,
                "max_rel": e.max_rel,
                "mean_rel": e.mean_rel,
                "images": e.compared,
                "histogram": e.histogram,
            }
            for e in report.tensors
        ],
        "histogram_log10_edges": [float(v) for v in HISTOGRAM_EDGES],
    }


def _detections(report: BackendReport) -> dict[str, Any]:
    agreements = report.agreements.values()
    scores = [d for a in agreements for d in a.score_differences]
    boxes = [v for a in agreements for v in a.box_ious]
    masks = [v for a in agreements for v in a.mask_ious]
    return {
        "against": report.reference,
        "matched": sum(a.matched for a in agreements),
        "missed": sum(a.missed for a in agreements),
        "extra": sum(a.extra for a in agreements),
        "max_score_difference": max(scores, default=None),
        "mean_score_difference": float(np.mean(scores)) if scores else None,
        "min_box_iou": min(boxes, default=None),
        "mean_box_iou": float(np.mean(boxes)) if boxes else None,
        "min_mask_iou": min(masks, default=None),
        "mean_mask_iou": float(np.mean(masks)) if masks else None,
        "images": [
            {
                "image": name,
                "matched": a.matched,
                "missed": a.missed,
                "extra": a.extra,
                "max_score_difference": max(a.score_differences, default=None),
                "min_box_iou": min(a.box_ious, default=None),
                "min_mask_iou": min(a.mask_ious, default=None),
            }
            for name, a in report.agreements.items()
        ],
    }


def _task(report: BackendReport, reference: BackendReport, own: BackendReport) -> dict[str, Any]:
    assert report.scores is not None and reference.scores is not None
    points = {
        kind: {stat: _points(value) for stat, value in getattr(report.scores, kind).items()} for kind in ("box", "mask")
    }
    delta = {}
    for name, other in ((REFERENCE, reference), (OWN_TRANSFORM, own)):
        if other.scores is not None and other is not report:
            delta[name] = {kind: _difference(points[kind]["AP"], _points(getattr(other.scores, kind)["AP"])) for kind in ("box", "mask")}
    per_class = {}
    for kind in ("box", "mask"):
        ours, theirs = getattr(report.scores, f"{kind}_per_class"), getattr(reference.scores, f"{kind}_per_class")
        per_class[kind] = {
            name: {"AP": _points(value), "delta": _difference(_points(value), _points(theirs.get(name)))}
            for name, value in ours.items()
        }
    return {**points, "delta": delta, "per_class": per_class}


def _points(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 3)


def _difference(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or theirs is None else round(ours - theirs, 3)


def write_report(result: CheckResult, folder: Path, failures: Sequence[str], max_ap_drop: float, max_tensor_error: float) -> dict[str, Any]:
    """Writes report.json, report.md and index.html into `folder` (beside the COCO results files)."""
    data = report_data(result, failures, max_ap_drop, max_tensor_error)
    write_atomically(folder / "report.json", (json.dumps(data, indent=1) + "\n").encode())
    write_atomically(folder / "report.md", markdown(data).encode())
    plots = _plots(result, data)
    write_atomically(folder / "index.html", page(data, plots).encode())
    return data


# ---------------------------------------------------------------- tables, shared by report.md and index.html


def tables(data: dict[str, Any]) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(title, note, header, rows) of every table of the report, in order."""
    found: list[tuple[str, str, list[str], list[list[str]]]] = []
    backends = data["backends"]
    found.append(
        (
            "Backends",
            f"{data['images']['compared']} images compared; PyTorch on the letterboxed input is the reference.",
            ["backend", "what", "run by", "ms / image", "failed images"],
            [
                [b["name"], b["description"], b["runtime"] or "–", _number(b["ms_per_image"], 1), str(len(b["failures"]))]
                for b in backends
            ],
        )
    )
    if "task" in data:
        rows = []
        for name, task in data["task"]["backends"].items():
            delta = task["delta"]
            rows.append(
                [name]
                + [_number(task["box"][s], 1) for s in STATS]
                + [_number(task["mask"][s], 1) for s in STATS]
                + [_signed(delta.get(REFERENCE, {}).get("box")), _signed(delta.get(REFERENCE, {}).get("mask"))]
                + [_signed(delta.get(OWN_TRANSFORM, {}).get("box")), _signed(delta.get(OWN_TRANSFORM, {}).get("mask"))]
            )
        header = ["backend", *[f"box {s}" for s in STATS], *[f"mask {s}" for s in STATS]]
        header += ["Δ box", "Δ mask", f"Δ box vs {OWN_TRANSFORM}", f"Δ mask vs {OWN_TRANSFORM}"]
        found.append(
            (
                "COCO AP",
                f"AP points (0-100) on {data['images']['scored']} annotated images; Δ: against PyTorch on the "
                f"letterboxed input (the graph's effect) and against PyTorch with its own transform (what a user "
                f"loses in all, the letterbox included).",
                header,
                rows,
            )
        )
        classes = list(next(iter(data["task"]["backends"].values()))["per_class"]["mask"])
        names = [n for n in data["task"]["backends"] if n != REFERENCE]
        rows = []
        for cls in classes:
            row = [cls, _number(data["task"]["backends"][REFERENCE]["per_class"]["box"][cls]["AP"], 1)]
            row.append(_number(data["task"]["backends"][REFERENCE]["per_class"]["mask"][cls]["AP"], 1))
            for name in names:
                per_class = data["task"]["backends"][name]["per_class"]
                row.append(f"{_signed(per_class['box'][cls]['delta'])} / {_signed(per_class['mask'][cls]['delta'])}")
            rows.append(row)
        found.append(
            (
                "AP per class",
                "PyTorch's box and mask AP, and each backend's difference to it (box / mask).",
                ["class", "PyTorch box AP", "PyTorch mask AP", *names],
                rows,
            )
        )
    detections = data["detections"]["backends"]
    if detections:
        found.append(
            (
                "Detections",
                f"Each backend's detections against PyTorch's, image by image ({data['detections']['match']}); "
                "masks pasted at the image's size.",
                ["backend", "matched", "missed", "extra", "max |Δ score|", "min box IoU", "mean box IoU", "min mask IoU", "mean mask IoU"],
                [
                    [
                        name,
                        str(d["matched"]),
                        str(d["missed"]),
                        str(d["extra"]),
                        _number(d["max_score_difference"], 4),
                        _number(d["min_box_iou"], 4),
                        _number(d["mean_box_iou"], 4),
                        _number(d["min_mask_iou"], 4),
                        _number(d["mean_mask_iou"], 4),
                    ]
                    for name, d in detections.items()
                ],
            )
        )
    tensors = data["tensors"]["backends"]
    if tensors:
        roles = list(dict.fromkeys(t["tensor"] for b in tensors.values() for t in b["tensors"]))
        rows = []
        for role in roles:
            row = [role]
            for name, backend in tensors.items():
                entry = next((t for t in backend["tensors"] if t["tensor"] == role), None)
                mark = " ◀ jumps" if backend["first_jump"] == role else ""
                row.append(_number(entry["error"], 2, scientific=True) + mark if entry else "")
            rows.append(row)
        found.append(
            (
                "Tensors",
                f"Error of each dense tensor against PyTorch's ({data['tensors']['error']}) on the first "
                f"{data['tensors']['images']} images, in data-flow order: the first tensor whose error jumps is where "
                "a graph starts to answer differently.",
                ["tensor", *tensors],
                rows,
            )
        )
        for name, backend in tensors.items():
            found.append(
                (
                    f"Tensors: {name}",
                    f"Polygraphy's comparison (worst image's maxima, mean over images of the means); first jump: "
                    f"{backend['first_jump'] or 'none'}.",
                    ["tensor", "error", "max |Δ|", "mean |Δ|", "max rel", "mean rel"],
                    [
                        [
                            t["tensor"],
                            _number(t["error"], 2, True),
                            _number(t["max_abs"], 2, True),
                            _number(t["mean_abs"], 2, True),
                            _number(t["max_rel"], 2, True),
                            _number(t["mean_rel"], 2, True),
                        ]
                        for t in backend["tensors"]
                    ],
                )
            )
    failed = [(b["name"], f["image"] or "(all)", f["why"]) for b in backends for f in b["failures"]]
    failed += [("(input)", s["image"], s["why"]) for s in data["images"]["skipped"]]
    if failed:
        found.append(("Failures", "Images a backend could not answer, and images that could not be read.", ["backend", "image", "what went wrong"], [list(f) for f in failed]))
    return found


def _number(value: float | None, digits: int, scientific: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}e}" if scientific else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def _verdict(data: dict[str, Any]) -> list[str]:
    gate = data["gate"]
    lines = ["PASSED" if gate["passed"] else "FAILED"]
    lines += gate["failures"]
    lines += [f"{name}: not run here (needs TensorRT and a GPU)" for name in gate["not_run"]]
    return lines


def markdown(data: dict[str, Any]) -> str:
    out = ["# maskrt check", ""]
    verdict = _verdict(data)
    out.append(f"**{verdict[0]}**" + (f" (max AP drop {data['gate']['max_ap_drop']:g} points)" if "task" in data else ""))
    out += [f"- {line}" for line in verdict[1:]]
    out.append("")
    for title, note, header, rows in tables(data):
        out += [f"## {title}", "", note, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------- index.html

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, td.t { text-align: left; }
th { background: #f4f4f4; } .note { color: #555; max-width: 60em; }
.passed { color: #146c2e; } .failed { color: #b3261e; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.scroll { overflow-x: auto; }
"""


def _cell(text: str) -> str:
    """Numbers right-aligned, words left."""
    numeric = re.fullmatch(r"[\d.eE+\-– /]*(◀ jumps)?", text) is not None
    return f"<td>{html.escape(text)}</td>" if numeric else f'<td class="t">{html.escape(text)}</td>'


def page(data: dict[str, Any], plots: list[tuple[str, str, bytes]]) -> str:
    verdict = _verdict(data)
    status = "passed" if data["gate"]["passed"] else "failed"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # Everything is inline; the page may load nothing else (images are data: URLs).
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        "<title>maskrt check</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>maskrt check</h1>",
        f'<p class="{status}"><strong>{html.escape(verdict[0])}</strong></p>',
    ]
    if verdict[1:]:
        parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in verdict[1:]) + "</ul>")
    all_tables = tables(data)
    for title, note, header, rows in all_tables:
        parts.append(f"<h2>{html.escape(title)}</h2><p class=\"note\">{html.escape(note)}</p><div class=\"scroll\"><table>")
        parts.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows]
        parts.append("</table></div>")
        parts += [_image(alt, png) for plot_title, alt, png in plots if plot_title == title]
    titles = {title for title, _, _, _ in all_tables}
    for plot_title, alt, png in plots:
        if plot_title not in titles:
            parts.append(f"<h2>{html.escape(plot_title)}</h2><p class=\"note\">{html.escape(alt)}.</p>")
            parts.append(_image(alt, png))
    parts.append(f'<p class="note">{data["seconds"]:.1f} s in all.</p></body></html>\n')
    return "\n".join(parts)


def _image(alt: str, png: bytes) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


# ---------------------------------------------------------------- plots


def _plots(result: CheckResult, data: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    """(the table it goes under, alt text, PNG) of each plot."""
    plots = []
    if "task" in data:
        plots.append(("COCO AP", "box and mask AP of each backend", _ap_plot(data)))
        plots.append(("AP per class", "each backend's AP difference to PyTorch, per class", _class_plot(data)))
    if data["tensors"]["backends"]:
        plots.append(("Tensors", "error of each dense tensor, in data-flow order, per backend", _tensor_plot(data)))
        plots.append(("Tensors", "histograms of the error of every element, per backend", _histograms(data)))
    if result.worst:
        plots.append(
            (
                "Where the backends disagree most",
                f"PyTorch's detections (left) beside those of the backend that differs most from them on the image "
                f"(right), on the {len(result.worst)} images where they differ most; detections scoring "
                f"{OVERLAY_SCORE} or more are drawn",
                _overlays(result),
            )
        )
    return plots


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _ap_plot(data: dict[str, Any]) -> bytes:
    task = data["task"]["backends"]
    names = list(task)
    figure = Figure(figsize=(max(6.0, 1.1 * len(names) + 2), 3.6))
    axes = figure.subplots()
    x = np.arange(len(names))
    for offset, kind, colour in ((-0.2, "box", COLOURS[0]), (0.2, "mask", COLOURS[1])):
        values = [task[n][kind]["AP"] or 0.0 for n in names]
        bars = axes.bar(x + offset, values, 0.4, label=f"{kind} AP", color=colour)
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
    axes.set_xticks(x, names, rotation=20, ha="right")
    axes.set_ylabel("AP (0-100)")
    axes.legend(loc="lower right")
    axes.set_title("COCO AP per backend")
    return _png(figure)


def _class_plot(data: dict[str, Any]) -> bytes:
    task = data["task"]["backends"]
    names = [n for n in task if n != REFERENCE]
    classes = list(task[REFERENCE]["per_class"]["mask"])
    figure = Figure(figsize=(max(7.0, 1.3 * len(names) * 2 + 3), max(2.5, 0.22 * len(classes) + 1.5)))
    panels = figure.subplots(1, 2)
    for panel, kind in zip(panels, ("box", "mask")):
        values = np.array(
            [[task[n]["per_class"][kind][c]["delta"] if task[n]["per_class"][kind][c]["delta"] is not None else np.nan for n in names] for c in classes],
            float,
        )
        limit = max(0.5, float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.5)
        image = panel.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        panel.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        panel.set_yticks(range(len(classes)), classes, fontsize=7 if len(classes) > 20 else 9)
        panel.set_title(f"{kind} AP − PyTorch's (points)")
        if len(classes) * len(names) <= 60:
            for (i, j), value in np.ndenumerate(values):
                if np.isfinite(value):
                    ink = "white" if abs(value) > 0.6 * limit else "black"  # readable on the darkest cells
                    panel.text(j, i, f"{value:+.2f}", ha="center", va="center", fontsize=8, color=ink)
        figure.colorbar(image, ax=panel, shrink=0.8)
    return _png(figure)


def _tensor_plot(data: dict[str, Any]) -> bytes:
    tensors = data["tensors"]["backends"]
    roles = list(dict.fromkeys(t["tensor"] for b in tensors.values() for t in b["tensors"]))
    figure = Figure(figsize=(max(8.0, 0.45 * len(roles) + 3), 4.2))
    axes = figure.subplots()
    for index, (name, backend) in enumerate(tensors.items()):
        by_role = {t["tensor"]: t["error"] for t in backend["tensors"]}
        values = [max(by_role[r], 1e-12) if r in by_role else np.nan for r in roles]
        # Backends that agree draw on top of each other: shapes and sizes keep each one visible.
        axes.plot(
            range(len(roles)),
            values,
            marker="osD^v<>"[index % 7],
            markersize=9 - 1.2 * (index % 5),
            linestyle=("-", "--", ":", "-.")[index % 4],
            label=name,
            color=COLOURS[index % len(COLOURS)],
            alpha=0.85,
        )
        if backend["first_jump"] in roles:
            at = roles.index(backend["first_jump"])
            axes.annotate("jumps", (at, values[at]), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    axes.axhline(data["gate"]["max_tensor_error_fp32"], color="grey", linestyle="--", linewidth=1, label="FP32 limit")
    axes.set_yscale("log")
    axes.set_xticks(range(len(roles)), roles, rotation=60, ha="right", fontsize=8)
    axes.set_ylabel("error (p99 |Δ| / mean |PyTorch|)")
    axes.set_title("Dense tensors against PyTorch, in data-flow order")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the plot, off the lines
    axes.grid(True, which="major", axis="y", alpha=0.3)
    return _png(figure)


def _histograms(data: dict[str, Any]) -> bytes:
    tensors = data["tensors"]["backends"]
    groups = {"FPN": "backbone.", "RPN head": "rpn.", "box head": "roi_heads.box", "mask head": "roi_heads.mask"}
    figure = Figure(figsize=(4.0 * len(groups), 3.2))
    panels = figure.subplots(1, len(groups), sharey=True)
    for panel, (group, prefix) in zip(panels, groups.items()):
        for index, (name, backend) in enumerate(tensors.items()):
            edges = np.array(backend["histogram_log10_edges"])
            counts = np.sum([t["histogram"] for t in backend["tensors"] if t["tensor"].startswith(prefix) and t["histogram"]], axis=0)
            if np.ndim(counts) == 0 or not np.sum(counts):
                continue
            fraction = np.asarray(counts, float) / np.sum(counts)
            panel.stairs(fraction, edges, label=name, color=COLOURS[index % len(COLOURS)])
        panel.set_title(group)
        panel.set_xlabel("log10 |Δ| / mean |PyTorch|")
    panels[0].set_ylabel("fraction of elements")
    panels[-1].legend(fontsize=7)
    return _png(figure)


def _overlays(result: CheckResult) -> bytes:
    rows = result.worst
    figure = Figure(figsize=(9.0, 4.2 * len(rows)))
    panels = figure.subplots(len(rows), 2, squeeze=False)
    names = result.class_names
    for (left, right), worst in zip(panels, rows):
        image = read_rgb(worst.path)
        for panel, detections, title in (
            (left, worst.reference, REFERENCE),
            (right, worst.candidate, worst.backend),
        ):
            panel.imshow(_draw(image, detections, names))
            panel.set_title(f"{worst.file_name} · {title}", fontsize=9)
            panel.axis("off")
    return _png(figure)


def _draw(image: np.ndarray, detections: list[dict[str, Any]], names: Sequence[str]) -> np.ndarray:
    """Translucent masks, boxes and class names over the image, for detections scoring OVERLAY_SCORE or more."""
    detections = [d for d in detections if d["score"] >= OVERLAY_SCORE]
    scale = max(1, 512 // max(image.shape[:2]))
    canvas = cv2.resize(image, (image.shape[1] * scale, image.shape[0] * scale), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    for detection in detections:
        colour = np.array(COLOURS[detection["category_id"] % len(COLOURS)]) * 255
        segmentation = detection["segmentation"]
        mask = coco_mask.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}).astype(bool)
        mask = cv2.resize(mask.astype(np.uint8), (canvas.shape[1], canvas.shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
        canvas[mask] = 0.5 * canvas[mask] + 0.5 * colour
    drawn = canvas.astype(np.uint8)
    for detection in detections:
        colour = tuple(int(c * 255) for c in COLOURS[detection["category_id"] % len(COLOURS)])
        x, y, w, h = (v * scale for v in detection["bbox"])
        cv2.rectangle(drawn, (int(x), int(y)), (int(x + w), int(y + h)), colour, 1)
        label = names[detection["category_id"]] if detection["category_id"] < len(names) else str(detection["category_id"])
        cv2.putText(drawn, f"{label} {detection['score']:.2f}", (int(x), max(10, int(y) - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
    return drawn


# ---------------------------------------------------------------- the folder, and what the console shows


def check_report_folder(output: Path) -> None:
    """Refuses, before the check runs, a report folder that is a file, holds other files than an earlier report, or
    whose parent, where the report is staged, is missing or cannot be written."""
    if output.exists() and not output.is_dir():
        raise BadInput(f"{output}: is a file, expected a folder for the report")
    if output.is_dir() and any(output.iterdir()) and not (output / "report.json").is_file():
        raise BadInput(f"{output}: is a folder that holds other files than a report; choose a new report folder")
    if not output.parent.is_dir():
        raise BadInput(f"{output}: the folder {output.parent} does not exist")
    check_writable(output.parent, output)


@contextmanager
def report_folder(output: Path) -> Iterator[Path]:
    """A staging folder beside `output`, renamed to it when the block ends well, so the report appears whole. An
    earlier report in `output` (a folder with a report.json) is replaced; any other non-empty folder is refused."""
    check_report_folder(output)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old.", dir=output.parent))
            os.replace(output, old / output.name)
            os.replace(staging, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def print_summary(data: dict[str, Any], output: Path, console: Console) -> None:
    """The verdict, AP per backend (or the detections without annotations) and where the report is."""
    if "task" in data:
        table = Table(title="COCO AP (0-100)", title_justify="left")
        for column in ("backend", "box AP", "mask AP", "Δ box", "Δ mask"):
            table.add_column(column, justify="left" if column == "backend" else "right")
        for name, task in data["task"]["backends"].items():
            delta = task["delta"].get(REFERENCE, {})
            table.add_row(name, _number(task["box"]["AP"], 2), _number(task["mask"]["AP"], 2), _signed(delta.get("box")), _signed(delta.get("mask")))
    else:
        table = Table(title="Detections against PyTorch", title_justify="left")
        for column in ("backend", "matched", "missed", "extra", "min mask IoU"):
            table.add_column(column, justify="left" if column == "backend" else "right")
        for name, found in data["detections"]["backends"].items():
            table.add_row(name, str(found["matched"]), str(found["missed"]), str(found["extra"]), _number(found["min_mask_iou"], 3))
    console.print(table)
    for name, tensors in data["tensors"]["backends"].items():
        if tensors["first_jump"]:
            console.print(f"{name}: its dense tensors start to differ from PyTorch's at {tensors['first_jump']}")
    verdict = _verdict(data)
    console.print(f"maskrt check: {verdict[0]}", style="bold green" if data["gate"]["passed"] else "bold red")
    for line in verdict[1:]:
        console.print(f"  {line}", style="red" if line in data["gate"]["failures"] else "yellow")
    console.print(f"report: {output / 'index.html'}")
