"""`trt-convert`: an export → the deploy graph (surgery) → the precision ONNX → the TensorRT engine and its json.

Each step is skipped when its result is the input: a deploy graph (told by its "maskrt.deploy" metadata) skips
surgery, a precision ONNX (its "maskrt.precision" metadata) skips the precision step. The graph TensorRT builds is
kept beside the engine: model.deploy.onnx for FP32 and for FP16 on TensorRT <= 10 (the builder's FP16 flag does the
rest), model.fp16.onnx (ModelOpt's AutoCast) on TensorRT 11, model.int8.onnx (Q/DQ from ModelOpt's PTQ) everywhere.
When the engine is not built here (--onnx-only, or no TensorRT or GPU), the precision ONNX is the typed form that every
supported TensorRT builds; without TensorRT the command then stops with exit code 3 and the trtexec line for it.
Surgery (onnx-graphsurgeon, torch) is imported only for an export, so a deploy or precision graph converts where only
TensorRT, ONNX and maskrt's runtime are installed (a Jetson).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx
from rich.console import Console

from maskrt.contracts.errors import BadInput, TensorRTUnavailable
from maskrt.contracts.files import check_output_path, file_sha256, read_onnx, write_atomically
from maskrt.contracts.precisions import (
    AUTOCAST,
    CALIBRATION_METHODS,
    CALIBRATORS,
    DEFAULT_PRECISION,
    DEPLOY,
    PRECISION_OF_FORM,
    PRECISIONS,
    QDQ,
)
from maskrt.contracts.records import (
    DeployRecord,
    check_batch_range,
    read_deploy_record,
    read_export_record,
    read_precision_record,
    write_precision_record,
)
from maskrt.contracts.tensorrt import installed_tensorrt
from maskrt.convert.build import (
    BuildOptions,
    LegacyCalibration,
    Recipe,
    batch_profile,
    build_engine,
    calibration_cache_key,
    check_recipe,
    missing_builder,
    recipe,
    trtexec_advice,
)
from maskrt.convert.precision import autocast_fp16, fp32_node_names, quantize_int8
from maskrt.convert.settings import DeployOptions
from maskrt.plugins.cuda import INSTALL_HINT

EXPORT = "export"  # what the input to trt-convert is when it is none of the graph forms of contracts.precisions


@dataclass(frozen=True)
class CalibrationOptions:
    """Where INT8 calibration images come from and how they are used."""

    images: Path | None = None  # a folder of images or a COCO folder (images/ + instances.json)
    annotations: Path | None = None
    count: int = 512
    method: str = "entropy"  # ModelOpt's PTQ: entropy, max or percentile
    calibrator: str = "qdq"  # qdq: a Q/DQ graph from ModelOpt; legacy: IInt8EntropyCalibrator2 (TensorRT <= 10)
    seed: int = 0


def convert(
    model_path: Path,
    output: Path | None = None,
    *,
    precision: str | None = None,
    graph: DeployOptions = DeployOptions(),
    calibration: CalibrationOptions = CalibrationOptions(),
    options: BuildOptions = BuildOptions(),
    onnx_only: bool = False,
    surgery_only: bool = False,
    console: Console | None = None,
) -> Path:
    """The whole `trt-convert` command; returns the last file written (the engine, or the ONNX with --onnx-only or
    --surgery-only). Raises BadInput for a bad input before anything is written, TensorRTUnavailable (exit code 3)
    after the precision ONNX when no engine can be built here. `graph` says how surgery makes the deploy graph of an
    export; of its options, `plugins`, `max_batch` and `opt_batch` are checked against a deploy graph given instead
    (its opt_batch tunes the engine's optimization profile)."""
    console = console or Console(stderr=True)
    max_batch, opt_batch = graph.max_batch, graph.opt_batch
    check_batch_range(max_batch, opt_batch if max_batch is not None else None, model_path)
    named = model_path.with_name("deploy.onnx") if surgery_only and output is None else output
    if named is not None:  # an output that is the input is refused before the input is read
        check_output_path(named, model_path)
    model = read_onnx(model_path)
    deploy_record = read_deploy_record(model, model_path)
    precision_record = read_precision_record(model, model_path)
    given = _form(precision_record.precision if precision_record else None, deploy_record, model_path)
    if given == EXPORT:
        check_batch_range(max_batch, opt_batch, model_path)
    if surgery_only:
        if given != EXPORT:
            raise BadInput(f"{model_path}: is already a deploy graph; --surgery-only takes an export")
        return _surgery_to_file(model_path, output, graph, console)
    precision = _precision(model_path, precision, given)
    plugins = _plugins(model_path, graph.plugins, deploy_record)
    _check_batch_flags(model_path, deploy_record, max_batch, opt_batch)
    _check_calibration(model_path, precision, given, calibration)
    tensorrt = installed_tensorrt()
    check_recipe(model_path, precision, calibration.calibrator, plugins, options, tensorrt)
    if onnx_only and calibration.calibrator == "legacy":
        raise BadInput(
            f"{model_path}: --int8-calibrator legacy calibrates inside TensorRT's builder, and --onnx-only builds "
            "nothing: use --int8-calibrator qdq for a Q/DQ graph"
        )
    missing = None if onnx_only else missing_builder(tensorrt)
    plan = recipe(precision, calibration.calibrator, given, tensorrt if missing is None else None)
    paths = _paths(model_path, output, precision, plan, onnx_only, given)
    for path in paths.written:
        check_output_path(path, model_path)
    if paths.precision is not None:
        _check_modelopt(model_path, precision)
    if (plan.graph == QDQ and given != QDQ) or plan.calibrate:  # calibration images will be read
        calibration_batch = _calibration_batch(model, deploy_record, max_batch, opt_batch, plan.calibrate)
        _check_calibration_count(model_path, calibration, calibration_batch)

    if given == EXPORT:
        deploy, deploy_sha256 = _surgery(model_path, paths.deploy, replace(graph, plugins=plugins), console)
    else:
        deploy = model
        deploy_sha256 = precision_record.deploy_sha256 if precision_record else file_sha256(model_path)
    record = read_deploy_record(deploy, model_path)
    assert record is not None  # surgery writes it, and a graph given as the input was told by it
    if opt_batch is not None:  # the engine's profile is tuned for it, whichever graph the range came from
        record = replace(record, opt_batch=opt_batch)
    built = deploy
    if paths.precision is not None:
        built = _precision_graph(deploy, plan.graph, calibration, record, deploy_sha256, console)
        built_data = built.SerializeToString()
        write_atomically(paths.precision, built_data)
        console.print(f"wrote {paths.precision} ({len(built_data) / 1e6:.1f} MB)")
    if paths.engine is None:
        return paths.built
    if missing is not None:
        inputs = [(value.name, _dims(value)) for value in built.graph.input]
        raise TensorRTUnavailable(
            f"{paths.built} is ready, but building its engine needs {missing} ({INSTALL_HINT}); "
            + trtexec_advice(paths.built, paths.engine, plan, plugins, options, batch_profile(inputs, record))
        )
    fp32_nodes: list[str] = []
    if plan.hold_fp32:
        fp32_nodes = fp32_node_names(built)
    legacy = _legacy_calibration(paths.engine, deploy, deploy_sha256, calibration, record, console) if plan.calibrate else None
    build_engine(
        paths.built,
        paths.engine,
        plan,
        options,
        record,
        precision,
        deploy_sha256,
        console,
        fp32_nodes=fp32_nodes,
        calibration=legacy,
    )
    return paths.engine


def _dims(value: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    """A graph input's dimensions: numbers, or the names of symbolic ones."""
    return tuple(dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in value.type.tensor_type.shape.dim)


def _form(precision: str | None, deploy: DeployRecord | None, path: Path) -> str:
    """What the input to trt-convert is: a graph form of contracts.precisions, told by its records, or an export."""
    if precision is None:
        return DEPLOY if deploy is not None else EXPORT
    if precision not in PRECISIONS or deploy is None:
        raise BadInput(f"{path}: its precision record names {precision!r}, which maskrt does not make")
    return PRECISIONS[precision].typed_graph


@dataclass(frozen=True)
class _Paths:
    built: Path  # the graph TensorRT builds; with --onnx-only, the file written
    deploy: Path | None  # where the deploy graph that surgery makes is written; None: the input is one, or --onnx-only
    precision: Path | None  # where the precision graph is written; None: the input or the deploy graph is built
    engine: Path | None  # None with --onnx-only
    calibration_cache: Path | None

    @property
    def written(self) -> list[Path]:
        paths = [self.deploy, self.precision, self.engine, self.calibration_cache]
        if self.engine is not None:
            paths.append(self.engine.with_name(self.engine.name + ".json"))
        if self.calibration_cache is not None:
            paths.append(self.calibration_cache.with_name(self.calibration_cache.name + ".json"))
        return [path for path in paths if path is not None]


def _paths(model_path: Path, output: Path | None, precision: str, plan: Recipe, onnx_only: bool, given: str) -> _Paths:
    if onnx_only:
        built = output or model_path.with_name(f"{model_path.stem}.{PRECISIONS[precision].suffix}.onnx")
        if plan.graph == given or (plan.graph == DEPLOY and given != EXPORT):
            raise BadInput(f"{model_path}: is already the {precision} graph; --onnx-only has nothing to write")
        if plan.graph == DEPLOY:
            return _Paths(built, deploy=built, precision=None, engine=None, calibration_cache=None)
        return _Paths(built, deploy=None, precision=built, engine=None, calibration_cache=None)
    engine = output or model_path.with_suffix(".engine")
    deploy = engine.with_name(f"{engine.stem}.{PRECISIONS['fp32'].suffix}.onnx") if given == EXPORT else None
    cache = _calibration_cache_path(engine) if plan.calibrate else None
    if plan.graph == given:
        return _Paths(model_path, None, None, engine, cache)
    if plan.graph == DEPLOY:
        return _Paths(deploy or model_path, deploy, None, engine, cache)
    precision_path = engine.with_name(f"{engine.stem}.{PRECISIONS[PRECISION_OF_FORM[plan.graph]].suffix}.onnx")
    return _Paths(precision_path, deploy, precision_path, engine, cache)


def _calibration_cache_path(engine: Path) -> Path:
    return engine.with_name(f"{engine.stem}.calib")


def _precision(path: Path, precision: str | None, given: str) -> str:
    """--precision, by default fp16, or the precision of a precision ONNX given as the input."""
    if precision is not None and precision not in PRECISIONS:
        raise BadInput(f"{path}: --precision must be one of {', '.join(PRECISIONS)}, got {precision}")
    own = PRECISION_OF_FORM.get(given)
    if given in (AUTOCAST, QDQ):
        if precision not in (None, own):
            raise BadInput(
                f"{path}: is already a {own} graph; build it with --precision {own}, or convert the FP32 deploy "
                f"graph or the export for {precision}"
            )
        return str(own)
    return precision or DEFAULT_PRECISION


def _plugins(path: Path, plugins: str | None, deploy_record: DeployRecord | None) -> str:
    """--plugins, by default maskrt, or the plugin mode of a deploy graph given as the input."""
    if deploy_record is None:
        return plugins or "maskrt"
    own = deploy_record.plugins
    if plugins not in (None, own):
        raise BadInput(
            f"{path}: is a --plugins {own} deploy graph; convert the export with --plugins {plugins} instead"
        )
    return own


def _check_batch_flags(path: Path, record: DeployRecord | None, max_batch: int | None, opt_batch: int | None) -> None:
    """--max-batch is surgery's (a deploy graph keeps the range it was made with); --opt-batch also tunes the engine
    of a dynamic-batch graph given as the input."""
    if record is None:
        return
    if max_batch is not None and record.max_batch is None:
        raise BadInput(
            f"{path}: is a deploy graph of static batch {record.batch}; --max-batch makes the batch symbolic in "
            "surgery: convert the export with it"
        )
    if max_batch is not None and max_batch != record.max_batch:
        raise BadInput(
            f"{path}: was made with --max-batch {record.max_batch}, not {max_batch}; convert the export with "
            f"--max-batch {max_batch}"
        )
    if opt_batch is not None and record.max_batch is None:
        raise BadInput(f"{path}: --opt-batch tunes a dynamic-batch graph; this one has a static batch of {record.batch}")
    if opt_batch is not None and record.max_batch is not None and opt_batch > record.max_batch:
        raise BadInput(f"{path}: --opt-batch must be between 1 and the graph's maximum batch {record.max_batch}, got {opt_batch}")


def _calibration_batch(
    model: onnx.ModelProto, record: DeployRecord | None, max_batch: int | None, opt_batch: int | None, legacy: bool
) -> int:
    """The images per calibration batch: the graph's batch (a dynamic-batch graph's maximum; its last batch may be
    smaller), or for TensorRT's own calibrator the batch of the profile it calibrates at (the opt batch)."""
    if record is None and max_batch is None:  # an export converted to a static graph of its own batch
        exported = read_export_record(model)
        return exported.batch if exported is not None else 1  # feeds() checks a plain export's batch
    _, opt, high = record.batch_range() if record is not None else (1, opt_batch or max_batch, max_batch)
    assert opt is not None and high is not None
    return (opt_batch or opt) if legacy else high


def _check_calibration_count(path: Path, calibration: CalibrationOptions, batch: int) -> None:
    """A calibration set smaller than one batch is refused before anything is written."""
    from maskrt.calib.images import list_images

    if calibration.images is None:
        return
    available = min(calibration.count, len(list_images(calibration.images, calibration.annotations).entries))
    if available < batch:
        raise BadInput(
            f"{calibration.images}: {available} calibration images are fewer than one batch of {batch}: give "
            f"--calib-count {batch} or more (and as many images)"
        )


def _check_calibration(path: Path, precision: str, given: str, calibration: CalibrationOptions) -> None:
    if calibration.calibrator not in CALIBRATORS:
        raise BadInput(f"{path}: --int8-calibrator must be qdq or legacy, got {calibration.calibrator}")
    if calibration.method not in CALIBRATION_METHODS:
        raise BadInput(f"{path}: --calib-method must be one of {', '.join(CALIBRATION_METHODS)}, got {calibration.method}")
    if calibration.calibrator == "legacy" and given not in (EXPORT, DEPLOY):
        raise BadInput(f"{path}: --int8-calibrator legacy calibrates the FP32 deploy graph or export, not this {given} graph")
    if PRECISIONS[precision].calibration and given != QDQ and calibration.images is None:
        raise BadInput(
            f"{path}: --precision int8 needs calibration images: give --calib-images DIR (a folder of images, or a "
            "COCO folder with images/ and instances.json) of the kind the model will see"
        )
    if calibration.count < 1:
        raise BadInput(f"{path}: --calib-count must be at least 1, got {calibration.count}")




def _check_modelopt(path: Path, precision: str) -> None:
    """The FP16 and INT8 graphs are ModelOpt's: refused before anything is written where it cannot be imported."""
    try:
        import modelopt.onnx  # noqa: F401
    except ImportError as error:
        reason = str(error).splitlines()[0]
        raise BadInput(
            f"{path}: making the {precision} graph needs NVIDIA ModelOpt's ONNX tools, which cannot be imported here "
            f"({type(error).__name__}: {reason}); install nvidia-modelopt with onnxslim, onnxconverter-common, "
            "onnxscript, ml_dtypes, lief and cppimport, or convert on a machine that has them"
        ) from None


def _surgery(model_path: Path, output: Path | None, options: DeployOptions, console: Console) -> tuple[onnx.ModelProto, str]:
    """The deploy graph of the export and its sha256, written to `output` when there is one."""
    from maskrt.convert.surgery import surgery

    deploy = surgery(model_path, options, console)
    data = deploy.SerializeToString()
    if output is not None:
        write_atomically(output, data)
        console.print(f"wrote {output} ({len(data) / 1e6:.1f} MB)")
    return deploy, hashlib.sha256(data).hexdigest()


def _surgery_to_file(model_path: Path, output: Path | None, options: DeployOptions, console: Console) -> Path:
    from maskrt.convert.surgery import surgery_to_file

    deploy = output or model_path.with_name("deploy.onnx")  # checked by convert() before the export was read
    surgery_to_file(model_path, deploy, options, console)
    return deploy


def _calibration_feeds(
    deploy: onnx.ModelProto, calibration: CalibrationOptions, record: DeployRecord, console: Console, legacy: bool = False
) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """The deploy graph's calibration batches from the calibration images, and the names of the images used: batches
    of the graph's batch; of a dynamic-batch graph, its maximum with a smaller last one, or for TensorRT's own
    calibrator (`legacy`) the opt batch of the profile it calibrates at."""
    from maskrt.calib.calibration import calibration_set, feeds

    assert calibration.images is not None  # _check_calibration refused int8 without images
    images = calibration_set(
        calibration.images,
        calibration.count,
        calibration.seed,
        record.input_size,
        record.image_mean,
        annotations=calibration.annotations,
        console=console,
    )
    _, opt, high = record.batch_range()
    batch = opt if legacy else high
    names = [graph_input.name for graph_input in deploy.graph.input]
    batches = feeds(images, batch, names, console, partial_last=record.dynamic_batch and not legacy)
    return batches, images.names


def _precision_graph(
    deploy: onnx.ModelProto,
    form: str,
    calibration: CalibrationOptions,
    record: DeployRecord,
    deploy_sha256: str,
    console: Console,
) -> onnx.ModelProto:
    """The AutoCast FP16 or the Q/DQ INT8 graph of the deploy graph; its "maskrt.precision" record also names the
    deploy graph it came from."""
    if form == AUTOCAST:
        console.print("casting the deploy graph to FP16 (ModelOpt AutoCast), box coordinates kept FP32")
        result = autocast_fp16(deploy)
    else:
        batches, _ = _calibration_feeds(deploy, calibration, record, console)
        result = quantize_int8(deploy, batches, calibration.method, console)
    made = read_precision_record(result)
    assert made is not None  # autocast_fp16 and quantize_int8 write it
    write_precision_record(result, replace(made, deploy_sha256=deploy_sha256))
    return result


def _legacy_calibration(
    engine: Path,
    deploy: onnx.ModelProto,
    deploy_sha256: str | None,
    calibration: CalibrationOptions,
    record: DeployRecord,
    console: Console,
) -> LegacyCalibration:
    assert deploy_sha256 is not None  # legacy calibration takes an export or a deploy graph, whose sha256 is known
    batches, names = _calibration_feeds(deploy, calibration, record, console, legacy=True)
    return LegacyCalibration(batches, _calibration_cache_path(engine), calibration_cache_key(deploy_sha256, names))
