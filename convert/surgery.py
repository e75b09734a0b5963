"""Graph surgery: a torchvision Mask R-CNN export → the static deploy graph (docs/design.md, "The deploy graph").

The backbone+FPN, the RPN head and the box and mask heads are kept as exported; torchvision's preprocessing becomes
"letterboxed 0..255 images in, normalise (and pad) in the graph", and everything between the heads (anchors,
proposal selection, RoI pooling, box decoding, NMS, mask class selection) is rebuilt with static shapes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime
import torch
from rich.console import Console
from rich.table import Table
from torchvision.models.detection.anchor_utils import AnchorGenerator

from maskrt.contracts.errors import BadInput
from maskrt.contracts.files import check_output_path, file_sha256, read_onnx, write_atomically
from maskrt.contracts.plugins import PLUGIN_MODES, PLUGIN_NAMESPACE, PLUGIN_VERSION
from maskrt.contracts.records import (
    BATCH_DIM,
    DEEPSTREAM_LAYOUT,
    DEFAULT_ANCHOR_SIZES,
    DEFAULT_ASPECT_RATIOS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYOUTS,
    REBUILT_PREFIX,
    DeployRecord,
    DetectionSettings,
    ExportRecord,
    check_batch_range,
    read_export_record,
    write_deploy_record,
)
from maskrt.convert.dynamic_batch import declare_batch, follow_batch
from maskrt.convert.extent import follow_image_extent
from maskrt.convert.graphs import Emitter, default_opset, infer_shapes, static_shape
from maskrt.convert.layouts import deepstream_outputs
from maskrt.convert.lint import lint_graph
from maskrt.convert.locate import ExportedParts, locate_parts, padding_divisor, preprocessing
from maskrt.convert.rebuild import Geometry, rebuild_middle
from maskrt.convert.settings import MIN_OPSET, DeployOptions, SettingsOverride

TORCHVISION_DEFAULT = "torchvision default"
# The rebuilt middle uses the opset-13 forms of ReduceSum and Split-free slicing; older exports are upgraded.
MIN_DEPLOY_OPSET = 13


def surgery_to_file(
    model_path: Path, output: Path, options: DeployOptions = DeployOptions(), console: Console | None = None
) -> onnx.ModelProto:
    console = console or Console(stderr=True)
    check_output_path(output, model_path)
    started = time.perf_counter()
    deploy = surgery(model_path, options, console)
    write_atomically(output, deploy.SerializeToString())
    console.print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
    return deploy


def surgery(model_path: Path, options: DeployOptions = DeployOptions(), console: Console | None = None) -> onnx.ModelProto:
    """The deploy graph of the export at `model_path`, checked by lint, made as `options` say. `default_anchors` lets
    an export whose graph does not show its anchors use torchvision's defaults.

    It reads `images` and `image_sizes` (each image's (h, w) in the letterbox) and answers for each image as
    torchvision does on that image alone (convert/extent.py); `single_input` leaves out image_sizes and clips to the
    whole canvas, for runtimes that feed one tensor. `max_batch` makes the batch symbolic (records.BATCH_DIM): one
    graph that runs 1 to max_batch images, whatever batch the export was traced at; `opt_batch` (default max_batch)
    is the batch its engine is tuned for. Without it the graph's batch is the export's. `layout` "deepstream" gives
    the outputs DeepStream's Mask R-CNN parser reads (records.DEEPSTREAM_OUTPUTS), from one input."""
    plugins, input_size, overrides = options.plugins or PLUGIN_MODES[0], options.input_size, options.overrides
    max_batch, opt_batch, layout = options.max_batch, options.opt_batch, options.layout
    single_input = options.single_input or layout == DEEPSTREAM_LAYOUT
    console = console or Console(stderr=True)
    if plugins not in PLUGIN_MODES:
        raise BadInput(f"--plugins must be maskrt or native, got {plugins}")
    if layout not in LAYOUTS:
        raise BadInput(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout}")
    if layout == DEEPSTREAM_LAYOUT and plugins != "native":
        raise BadInput(
            f"{model_path}: --layout deepstream is for DeepStream's nvinfer, whose TensorRT cannot load maskrt's Python "
            "plugins: convert with --plugins native"
        )
    check_batch_range(max_batch, opt_batch, model_path)
    model, source_sha256 = _load(model_path)
    record = read_export_record(model, model_path)
    graph = gs.import_onnx(model)
    parts = locate_parts(graph, model, model_path)
    batch, height, width = _input_geometry(parts, record, input_size, model_path, dynamic=max_batch is not None)
    padded = _padded_size(graph, parts, batch, (height, width), model_path)
    divisible, divisible_source = (32, "not used") if single_input else _size_divisible(graph, parts, batch, (height, width), record)
    settings, sources = _settings(record, parts, overrides)
    sources["size_divisible"] = divisible_source
    cell_anchors, sources["anchors"] = _cell_anchors(record, parts, model_path, options.default_anchors)
    mean, std, sources["image_mean"] = _normalisation(record, parts)
    sources["image_std"] = sources["image_mean"]
    # The parts are located and measured at the export's batch; a dynamic-batch graph makes it symbolic at the end.
    images = gs.Variable("images", np.float32, [batch, 3, height, width])
    image_sizes = None if single_input else gs.Variable("image_sizes", np.int32, [batch, 2])
    _preprocess(graph, images, parts.backbone_input, mean, std, (height, width), padded)
    _keep_only_reused_parts(graph, parts, images, model_path)
    if max_batch is not None:
        follow_batch(graph, images, batch, model_path)
    batches = f"batch 1 to {max_batch}" if max_batch is not None else f"batch {batch}"
    console.print(f"surgery on {model_path}: {plugins} plugins, {batches}, {height}x{width}")
    infer_shapes(graph)
    level_sizes = _level_sizes(parts, model_path)
    extent = None if image_sizes is None else follow_image_extent(graph, parts, image_sizes, padded, divisible, model_path)
    geometry = Geometry(
        batch=batch if max_batch is None else BATCH_DIM,
        image_size=(height, width),
        level_sizes=level_sizes,
        anchors=_grid_anchors(cell_anchors, level_sizes, padded, int(parts.objectness[0].shape[1]), model_path),
        num_classes=int(parts.class_logits.shape[1]),
        mask_size=int(parts.mask_logits.shape[-1]),
        opset=int(graph.opset),
        extent=extent,
    )
    outputs = rebuild_middle(graph, parts, geometry, settings, plugins)
    settings = _detections_kept(settings, int(outputs.boxes.shape[1]), sources)
    graph.inputs = [images] if image_sizes is None else [images, image_sizes]
    named = deepstream_outputs(graph, outputs, geometry.num_classes) if layout == DEEPSTREAM_LAYOUT else {
        output.name: getattr(outputs, output.name) for output in fields(outputs)
    }
    for name, tensor in named.items():
        tensor.name = name
    graph.outputs = list(named.values())
    graph.cleanup().toposort()
    if max_batch is not None:  # the shapes measured at the export's batch must not be folded into constants
        for tensor in graph.inputs:
            tensor.shape = [BATCH_DIM, *tensor.shape[1:]]
    infer_shapes(graph)  # what is static folds: the rebuilt middle's shapes computed from its tensors become constants
    onnxruntime.set_default_logger_severity(3)  # constant folding runs ONNX Runtime, which warns about every fold
    graph.fold_constants(fold_shapes=True).cleanup()
    infer_shapes(graph)
    if max_batch is not None:
        declare_batch(graph.outputs, model_path)

    deploy = gs.export_onnx(graph)
    # onnx-graphsurgeon writes the newest IR version, which older parsers (TensorRT 8.6) and ONNX Runtime refuse.
    deploy.ir_version = max(model.ir_version, onnx.helper.find_min_ir_version_for(deploy.opset_import, ignore_unknown=True))
    deploy.producer_name = "maskrt"
    del deploy.metadata_props[:]
    deploy.metadata_props.extend(model.metadata_props)
    deploy_record = DeployRecord(
        plugins=plugins,
        plugin_namespace=PLUGIN_NAMESPACE,
        plugin_version=PLUGIN_VERSION,
        batch=batch if max_batch is None else max_batch,
        input_size=(height, width),
        image_mean=mean,
        image_std=std,
        num_classes=geometry.num_classes,
        mask_size=geometry.mask_size,
        class_names=record.class_names if record else (),
        settings=settings,
        source_sha256=source_sha256,
        single_input=image_sizes is None,
        max_batch=max_batch,
        opt_batch=None if max_batch is None else opt_batch or max_batch,
        layout=layout,
    )
    write_deploy_record(deploy, deploy_record)
    _print_settings(console, deploy_record, parts, level_sizes, padded, divisible, sources)
    # The graph deploy came from, shapes inferred; lint reads no IR version or metadata.
    problems = lint_graph(graph, max_batch=max_batch)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BadInput(f"{model_path}: the deploy graph fails lint: {problems[0]}{more}")
    return deploy


def _load(path: Path) -> tuple[onnx.ModelProto, str]:
    """The export, upgraded to the opset the rebuilt middle needs, and the sha256 of its file."""
    model = read_onnx(path)
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise BadInput(f"{path}: opset {opset} is below {MIN_OPSET}; export with opset_version=17")
    if opset < MIN_DEPLOY_OPSET:
        model = onnx.version_converter.convert_version(model, MIN_DEPLOY_OPSET)
    return model, file_sha256(path)


def _input_geometry(
    parts: ExportedParts, record: ExportRecord | None, input_size: tuple[int, int] | None, path: Path, dynamic: bool
) -> tuple[int, int, int]:
    """(B, H, W): B from the image inputs (a plain export of B images has B inputs [3,H,W]), H×W from the export's
    static shape or --input-size. A dynamic-batch export (a symbolic B) is read at batch 1, for a `dynamic` graph."""
    first = parts.image_inputs[0].shape
    batch = len(parts.image_inputs) if len(first) == 3 else first[0]
    exported = tuple(first[-2:])
    static = all(isinstance(d, int) and d > 0 for d in exported)
    if input_size is None:
        if not static:
            raise BadInput(f"{path}: the export has a dynamic input size {list(first)}; give --input-size HxW")
        input_size = (int(exported[0]), int(exported[1]))
    elif static and tuple(exported) != tuple(input_size):
        raise BadInput(
            f"{path}: exported at {exported[0]}x{exported[1]}, but --input-size is {input_size[0]}x{input_size[1]}; "
            "re-export at that size or drop --input-size"
        )
    if not isinstance(batch, int) or batch < 1:
        if not dynamic:
            raise BadInput(
                f"{path}: the image input has a dynamic batch size {list(first)}; give --max-batch N for a "
                "dynamic-batch deploy graph, or export with a fixed batch"
            )
        return 1, input_size[0], input_size[1]
    if record is not None and record.batch != batch:
        raise BadInput(f"{path}: the metadata says batch {record.batch} but the graph has {batch} image inputs")
    return batch, input_size[0], input_size[1]


def _padded_size(graph: gs.Graph, parts: ExportedParts, batch: int, size: tuple[int, int], path: Path) -> tuple[int, int]:
    """The size of the batch the backbone reads, as the export's own transform makes it from an input of `size`.

    The deploy graph takes images already letterboxed to their final size, so an export that resizes them (a
    transform whose min_size and max_size are not the export's size) would run its backbone at another size."""
    done = preprocessing(graph, parts, batch, size)
    if done.resized != size:
        raise BadInput(
            f"{path}: the export resizes its {size[0]}x{size[1]} input to {done.resized[0]}x{done.resized[1]} before "
            "the backbone (its transform's min_size and max_size), which the deploy graph would not do: it takes images "
            f"already letterboxed to the size the backbone runs at. {_unresized_size_advice(graph, parts, batch, size, done.resized)}"
        )
    return done.padded


def _unresized_size_advice(
    graph: gs.Graph, parts: ExportedParts, batch: int, size: tuple[int, int], resized: tuple[int, int]
) -> str:
    """How to get a graph whose transform keeps its input: a static export must be exported again at its size; a
    dynamic-size export keeps the size it resizes to, or a pixel more on a side that it floored (320x480 scaled by
    0.8 comes out 319x479 in float32)."""
    if all(isinstance(d, int) and d > 0 for d in parts.image_inputs[0].shape[-2:]):
        return (
            f"Export with model.transform.min_size = ({min(size)},) and model.transform.max_size = {max(size)} "
            "(maskrt export does this)"
        )
    height, width = resized
    for kept in ((height, width), (height + 1, width + 1), (height + 1, width), (height, width + 1)):
        if preprocessing(graph, parts, batch, kept).resized == kept:
            return f"Its transform keeps --input-size {kept[0]}x{kept[1]}: convert at that size"
    return "Give an --input-size that its transform does not resize (its min_size on the short side, at most its max_size on the long)"


def _size_divisible(
    graph: gs.Graph, parts: ExportedParts, batch: int, size: tuple[int, int], record: ExportRecord | None
) -> tuple[int, str]:
    """GeneralizedRCNNTransform's size_divisible, which each image's padded extent is rounded up to, and where it
    came from: the metadata of maskrt export; else the export's own transform run on an image one pixel high (or
    wide) and as long as the input, which it pads to size_divisible without resizing; else, where the trace fixed the
    resize to the export's size (as a plain export does), the stride its padding rounds up to; else torchvision's."""
    if record is not None:
        return record.size_divisible, "metadata"
    short = 0 if size[0] <= size[1] else 1
    probe = (1, size[1]) if short == 0 else (size[0], 1)
    done = preprocessing(graph, parts, batch, probe)
    if done.resized == probe:
        return done.padded[short], "graph"
    divisor = padding_divisor(graph, parts)
    return (divisor, "graph") if divisor is not None else (32, TORCHVISION_DEFAULT)


def _settings(
    record: ExportRecord | None, parts: ExportedParts, overrides: SettingsOverride
) -> tuple[DetectionSettings, dict[str, str]]:
    """The model's own settings (maskrt export metadata, else the graph's constants, else torchvision's defaults),
    then the command line's overrides, with where each value came from."""
    defaults = DetectionSettings()
    names = [f.name for f in fields(DetectionSettings)]
    if record is not None:
        settings, sources = record.settings, {name: "metadata" for name in names}
    else:
        found = {k: v for k, v in parts.graph_settings.items() if k in names}
        typed = {k: _like(getattr(defaults, k), v) for k, v in found.items()}
        settings = DetectionSettings(**typed)
        sources = {name: "graph" if name in typed else TORCHVISION_DEFAULT for name in names}
    sources.update({f.name: "flag" for f in fields(overrides) if getattr(overrides, f.name) is not None})
    return overrides.apply(settings), sources


def _detections_kept(settings: DetectionSettings, k: int, sources: dict[str, str]) -> DetectionSettings:
    """The settings with detections_per_img as the graph keeps them: K rows, at most the proposals times the classes
    (all that torchvision could keep), so that the table and the metadata say what the graph does."""
    if k >= settings.detections_per_img:
        return settings
    sources["detections_per_img"] += f" ({settings.detections_per_img}, capped at all {k} proposal-class pairs)"
    return replace(settings, detections_per_img=k)


def _like(default: object, value: float | tuple[float, ...]) -> object:
    """A value read from the graph, typed as DetectionSettings holds it."""
    if isinstance(default, tuple):
        return tuple(float(v) for v in value)  # type: ignore[union-attr]
    return int(value) if isinstance(default, int) else float(value)  # type: ignore[arg-type]


def _normalisation(record: ExportRecord | None, parts: ExportedParts) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std) and where they came from."""
    if record is not None:
        return record.image_mean, record.image_std, "metadata"
    if parts.normalisation is not None:
        return *parts.normalisation, "graph"
    return IMAGENET_MEAN, IMAGENET_STD, TORCHVISION_DEFAULT


def _preprocess(
    graph: gs.Graph,
    images: gs.Variable,
    backbone_input: gs.Variable,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    size: tuple[int, int],
    padded: tuple[int, int],
) -> None:
    """GeneralizedRCNNTransform for letterboxed input: 0..255 → (x/255 - mean)/std, zero-padded to the size the
    backbone was built for (torchvision pads its batch to a multiple of size_divisible)."""
    emit = Emitter(graph, f"{REBUILT_PREFIX}/preprocess")
    backbone_input.inputs.clear()
    channel = (1, 3, 1, 1)
    scaled = emit("Div", images, np.float32(255))
    centred = emit("Sub", scaled, np.asarray(mean, np.float32).reshape(channel))
    pad_bottom, pad_right = padded[0] - size[0], padded[1] - size[1]
    padding = bool(pad_bottom or pad_right)
    normalised = emit("Div", centred, np.asarray(std, np.float32).reshape(channel), into=None if padding else backbone_input)
    if padding:
        pads = np.array([0, 0, 0, 0, 0, 0, pad_bottom, pad_right], np.int64)
        emit("Pad", normalised, pads, np.float32(0), into=backbone_input)


def _keep_only_reused_parts(graph: gs.Graph, parts: ExportedParts, images: gs.Variable, path: Path) -> None:
    """Cuts the export down to backbone+FPN+RPN head and the two heads, whose pooled inputs become open ends."""
    for site in (parts.box_pool, parts.mask_pool):
        site.pooled.inputs.clear()
        site.pooled.dtype, site.pooled.shape = np.float32, ["rois", None, site.attrs.output_size, site.attrs.output_size]
    graph.inputs = [images, parts.box_pool.pooled, parts.mask_pool.pooled]
    features = {id(t): t for t in parts.box_pool.features + parts.mask_pool.features}
    graph.outputs = [
        *parts.objectness,
        *parts.rpn_deltas,
        parts.class_logits,
        parts.box_regression,
        parts.mask_logits,
        *features.values(),
    ]
    for tensor in graph.outputs:
        tensor.dtype = tensor.dtype or np.float32
    graph.cleanup()
    open_inputs = {id(t) for t in graph.inputs}
    stray = {
        t.name
        for node in graph.nodes
        for t in node.inputs
        if isinstance(t, gs.Variable) and not t.inputs and id(t) not in open_inputs and t.name
    }
    if stray:
        raise BadInput(
            f"{path}: the reused parts read tensors from the part that surgery rebuilds: {', '.join(sorted(stray)[:3])}"
        )


def _level_sizes(parts: ExportedParts, path: Path) -> list[tuple[int, int]]:
    """Each RPN level's (Hl, Wl), in the RPN's level order."""
    sizes = []
    for objectness in parts.objectness:
        shape = static_shape(objectness)
        if shape is None:
            raise BadInput(f"{path}: could not infer the static shape of the RPN output {objectness.name}")
        sizes.append((shape[-2], shape[-1]))
    return sizes


def _cell_anchors(
    record: ExportRecord | None, parts: ExportedParts, path: Path, default_anchors: bool
) -> tuple[list[torch.Tensor], str]:
    """Each RPN level's cell anchors [A, 4] and where they came from: the export's metadata, else the graph's
    constants, else (only when asked: they move every box) torchvision's defaults."""
    if record is not None:
        return AnchorGenerator(record.anchor_sizes, record.aspect_ratios).cell_anchors, "metadata"
    if all(cells is not None for cells in parts.cell_anchors):
        return [torch.from_numpy(cells) for cells in parts.cell_anchors], "graph"  # type: ignore[arg-type]
    if default_anchors:
        return AnchorGenerator(DEFAULT_ANCHOR_SIZES, DEFAULT_ASPECT_RATIOS).cell_anchors, TORCHVISION_DEFAULT
    missing = [o.name for o, cells in zip(parts.objectness, parts.cell_anchors) if cells is None]
    raise BadInput(
        f"{path}: the graph does not show the anchors of the RPN levels {', '.join(missing)}; give --default-anchors "
        "to use torchvision's (sizes 32 to 512, one per level, ratios 0.5, 1, 2), or export with `maskrt export`, "
        "which records them"
    )


def _grid_anchors(
    cell_anchors: list[torch.Tensor],
    level_sizes: list[tuple[int, int]],
    padded: tuple[int, int],
    anchors_per_location: int,
    path: Path,
) -> list[np.ndarray]:
    """AnchorGenerator's anchors for each level [Hl*Wl*A, 4], from torchvision's own grid code."""
    if [len(c) for c in cell_anchors] != [anchors_per_location] * len(level_sizes):
        raise BadInput(
            f"{path}: the anchor generator has {[len(c) for c in cell_anchors]} anchors per level but the "
            f"RPN head predicts {anchors_per_location} at each of {len(level_sizes)} levels"
        )
    generator = AnchorGenerator(DEFAULT_ANCHOR_SIZES, DEFAULT_ASPECT_RATIOS)  # only its grid code is used
    generator.cell_anchors = cell_anchors
    strides = [[torch.tensor(padded[0] // h), torch.tensor(padded[1] // w)] for h, w in level_sizes]
    with torch.no_grad():
        grids = generator.grid_anchors([list(s) for s in level_sizes], strides)
    return [g.numpy() for g in grids]


def _print_settings(
    console: Console,
    record: DeployRecord,
    parts: ExportedParts,
    level_sizes: list[tuple[int, int]],
    padded: tuple[int, int],
    divisible: int,
    sources: dict[str, str],
) -> None:
    """Every value the deploy graph was built with, and where it came from: "metadata" (maskrt export), "graph" (the
    export's own constants and structure), "flag", or "torchvision default" (the graph does not show it)."""
    low, opt, high = record.batch_range()
    batches = f"batch {high}" if low == high else f"batch 1 to {high} (tuned for {opt})"
    table = Table(title=f"deploy graph: {record.plugins} plugins, {batches}, "
                  f"{record.input_size[0]}x{record.input_size[1]}, {record.num_classes} classes", title_justify="left")
    table.add_column("setting")
    table.add_column("value", justify="right")
    table.add_column("from")
    for name, value in asdict(record.settings).items():
        table.add_row(name, _shown(value), sources[name])
    per_location = parts.objectness[0].shape[1]
    grids = ", ".join(f"{h}x{w}" for h, w in level_sizes)
    table.add_row("anchors", f"{per_location} per location on grids {grids}", sources["anchors"])
    table.add_row("image_mean", _shown(record.image_mean), sources["image_mean"])
    table.add_row("image_std", _shown(record.image_std), sources["image_std"])
    table.add_row("padded_size", f"{padded[0]}x{padded[1]}", "graph")
    if not record.single_input:
        table.add_row("size_divisible", str(divisible), sources["size_divisible"])
    for head, site in (("box", parts.box_pool), ("mask", parts.mask_pool)):
        attrs = site.attrs
        levels = f"{attrs.min_level}" if attrs.min_level == attrs.max_level else f"{attrs.min_level}-{attrs.max_level}"
        pooling = f"{levels}, {attrs.output_size}x{attrs.output_size}, sampling {attrs.sampling_ratio}"
        table.add_row(f"{head}_roi_levels", pooling, "graph")
        if site.mapper_source != "not used":
            canonical = f"scale {_shown(attrs.canonical_scale)} at level {attrs.canonical_level}, eps {_shown(attrs.eps)}"
            table.add_row(f"{head}_roi_canonical", canonical, site.mapper_source)
    console.print(table)


def _shown(value: object) -> str:
    """A setting as the deploy graph uses it: floats as the shortest text of their float32."""
    if isinstance(value, tuple):
        return f"({', '.join(_shown(v) for v in value)})"
    return str(np.float32(value)) if isinstance(value, float) else str(value)
