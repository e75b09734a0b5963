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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError
from rich.console import Console

from maskrt.convert.build import (
    CALIBRATORS,
    INSTALL_HINT,
    PRECISIONS,
    BuildOptions,
    LegacyCalibration,
    MissingTensorRT,
    Recipe,
    build_engine,
    calibration_cache_key,
    check_recipe,
    installed_tensorrt,
    missing_builder,
    recipe,
    trtexec_advice,
)
from maskrt.convert.precision import (
    CALIBRATION_METHODS,
    PRECISION_METADATA_KEY,
    autocast_fp16,
    fp32_node_names,
    quantize_int8,
)
from maskrt.convert.settings import DEPLOY_METADATA_KEY, SettingsOverride, read_metadata, write_metadata
from maskrt.runtime.files import check_input_path, check_output_path, write_atomically

FORM_PRECISION = {"deploy": "fp32", "autocast": "fp16", "qdq": "int8"}
PRECISION_FORM = {"fp16": "autocast", "int8": "qdq"}


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
    plugins: str | None = None,
    single_input: bool = False,
    input_size: tuple[int, int] | None = None,
    default_anchors: bool = False,
    overrides: SettingsOverride = SettingsOverride(),
    calibration: CalibrationOptions = CalibrationOptions(),
    options: BuildOptions = BuildOptions(),
    onnx_only: bool = False,
    surgery_only: bool = False,
    console: Console | None = None,
) -> Path:
    """The whole `trt-convert` command; returns the last file written (the engine, or the ONNX with --onnx-only or
    --surgery-only). Raises ValueError for a bad input before anything is written, MissingTensorRT (exit code 3)
    after the precision ONNX when no engine can be built here."""
    console = console or Console(stderr=True)
    check_input_path(model_path, "an ONNX model")
    named = model_path.with_name("deploy.onnx") if surgery_only and output is None else output
    if named is not None:  # an output that is the input is refused before the input is read
        _check_writable(named, model_path)
    data, model = _read(model_path)
    deploy_record = read_metadata(model, DEPLOY_METADATA_KEY)
    precision_record = read_metadata(model, PRECISION_METADATA_KEY)
    given = PRECISION_FORM[precision_record["precision"]] if precision_record else "deploy" if deploy_record else "export"
    if surgery_only:
        if given != "export":
            raise ValueError(f"{model_path}: is already a deploy graph; --surgery-only takes an export")
        surgery = _SurgeryOptions(plugins or "maskrt", single_input, input_size, default_anchors, overrides)
        return _surgery_to_file(model_path, output, surgery, console)
    precision = _precision(model_path, precision, given)
    plugins = _plugins(model_path, plugins, deploy_record)
    _check_calibration(model_path, precision, given, calibration)
    tensorrt = installed_tensorrt()
    check_recipe(model_path, precision, calibration.calibrator, plugins, options, tensorrt)
    if onnx_only and calibration.calibrator == "legacy":
        raise ValueError(
            f"{model_path}: --int8-calibrator legacy calibrates inside TensorRT's builder, and --onnx-only builds "
            "nothing: use --int8-calibrator qdq for a Q/DQ graph"
        )
    missing = None if onnx_only else missing_builder(tensorrt)
    plan = recipe(precision, calibration.calibrator, given, tensorrt if missing is None else None)
    paths = _paths(model_path, output, precision, plan, onnx_only, given)
    for path in paths.written:
        _check_writable(path, model_path)
    if paths.precision is not None:
        _check_modelopt(model_path, precision)

    if given == "export":
        surgery = _SurgeryOptions(plugins, single_input, input_size, default_anchors, overrides)
        deploy, deploy_sha256 = _surgery(model_path, paths.deploy, surgery, console)
    else:
        deploy = model
        deploy_sha256 = precision_record.get("deploy_sha256") if precision_record else hashlib.sha256(data).hexdigest()
    record = read_metadata(deploy, DEPLOY_METADATA_KEY)
    built = deploy
    if paths.precision is not None:
        built = _precision_graph(deploy, plan.graph, calibration, record, deploy_sha256, console)
        built_data = built.SerializeToString()
        write_atomically(paths.precision, built_data)
        console.print(f"wrote {paths.precision} ({len(built_data) / 1e6:.1f} MB)")
    if paths.engine is None:
        return paths.built
    if missing is not None:
        raise MissingTensorRT(
            f"{paths.built} is ready, but building its engine needs {missing} ({INSTALL_HINT}); "
            + trtexec_advice(paths.built, paths.engine, plan, plugins, options)
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
        _engine_record(record, precision, deploy, deploy_sha256),
        console,
        fp32_nodes=fp32_nodes,
        calibration=legacy,
    )
    return paths.engine


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
        built = output or model_path.with_name(f"{model_path.stem}.{'deploy' if precision == 'fp32' else precision}.onnx")
        if plan.graph == given or (plan.graph == "deploy" and given != "export"):
            raise ValueError(f"{model_path}: is already the {precision} graph; --onnx-only has nothing to write")
        if plan.graph == "deploy":
            return _Paths(built, deploy=built, precision=None, engine=None, calibration_cache=None)
        return _Paths(built, deploy=None, precision=built, engine=None, calibration_cache=None)
    engine = output or model_path.with_suffix(".engine")
    deploy = engine.with_name(f"{engine.stem}.deploy.onnx") if given == "export" else None
    cache = _calibration_cache_path(engine) if plan.calibrate else None
    if plan.graph == given:
        return _Paths(model_path, None, None, engine, cache)
    if plan.graph == "deploy":
        return _Paths(deploy or model_path, deploy, None, engine, cache)
    precision_path = engine.with_name(f"{engine.stem}.{FORM_PRECISION[plan.graph]}.onnx")
    return _Paths(precision_path, deploy, precision_path, engine, cache)


def _calibration_cache_path(engine: Path) -> Path:
    return engine.with_name(f"{engine.stem}.calib")


def _read(path: Path) -> tuple[bytes, onnx.ModelProto]:
    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path}: not a readable ONNX model ({type(error).__name__})") from None
    if not model.graph.node:
        raise ValueError(f"{path}: not a readable ONNX model (no graph nodes)")
    return data, model


def _precision(path: Path, precision: str | None, given: str) -> str:
    """--precision, by default fp16, or the precision of a precision ONNX given as the input."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"{path}: --precision must be one of {', '.join(PRECISIONS)}, got {precision}")
    own = FORM_PRECISION.get(given)
    if given in ("autocast", "qdq"):
        if precision not in (None, own):
            raise ValueError(
                f"{path}: is already a {own} graph; build it with --precision {own}, or convert the FP32 deploy "
                f"graph or the export for {precision}"
            )
        return str(own)
    return precision or "fp16"


def _plugins(path: Path, plugins: str | None, deploy_record: dict[str, Any] | None) -> str:
    """--plugins, by default maskrt, or the plugin mode of a deploy graph given as the input."""
    if deploy_record is None:
        return plugins or "maskrt"
    own = str(deploy_record["plugins"])
    if plugins not in (None, own):
        raise ValueError(
            f"{path}: is a --plugins {own} deploy graph; convert the export with --plugins {plugins} instead"
        )
    return own


def _check_calibration(path: Path, precision: str, given: str, calibration: CalibrationOptions) -> None:
    if calibration.calibrator not in CALIBRATORS:
        raise ValueError(f"{path}: --int8-calibrator must be qdq or legacy, got {calibration.calibrator}")
    if calibration.method not in CALIBRATION_METHODS:
        raise ValueError(f"{path}: --calib-method must be one of {', '.join(CALIBRATION_METHODS)}, got {calibration.method}")
    if calibration.calibrator == "legacy" and given not in ("export", "deploy"):
        raise ValueError(f"{path}: --int8-calibrator legacy calibrates the FP32 deploy graph or export, not this {given} graph")
    if precision == "int8" and given != "qdq" and calibration.images is None:
        raise ValueError(
            f"{path}: --precision int8 needs calibration images: give --calib-images DIR (a folder of images, or a "
            "COCO folder with images/ and instances.json) of the kind the model will see"
        )
    if calibration.count < 1:
        raise ValueError(f"{path}: --calib-count must be at least 1, got {calibration.count}")


def _check_writable(path: Path, model_path: Path) -> None:
    check_output_path(path, model_path)
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"{path}: the output folder {path.parent} is not writable")


def _check_modelopt(path: Path, precision: str) -> None:
    """The FP16 and INT8 graphs are ModelOpt's: refused before anything is written where it cannot be imported."""
    try:
        import modelopt.onnx  # noqa: F401
    except ImportError as error:
        reason = str(error).splitlines()[0]
        raise ValueError(
            f"{path}: making the {precision} graph needs NVIDIA ModelOpt's ONNX tools, which cannot be imported here "
            f"({type(error).__name__}: {reason}); install nvidia-modelopt with onnxslim, onnxconverter-common, "
            "onnxscript, ml_dtypes, lief and cppimport, or convert on a machine that has them"
        ) from None


@dataclass(frozen=True)
class _SurgeryOptions:
    plugins: str
    single_input: bool
    input_size: tuple[int, int] | None
    default_anchors: bool
    overrides: SettingsOverride


def _surgery(
    model_path: Path, output: Path | None, options: _SurgeryOptions, console: Console
) -> tuple[onnx.ModelProto, str]:
    """The deploy graph of the export and its sha256, written to `output` when there is one."""
    from maskrt.convert.surgery import surgery

    deploy = surgery(
        model_path,
        options.plugins,
        options.input_size,
        options.overrides,
        console,
        default_anchors=options.default_anchors,
        single_input=options.single_input,
    )
    data = deploy.SerializeToString()
    if output is not None:
        write_atomically(output, data)
        console.print(f"wrote {output} ({len(data) / 1e6:.1f} MB)")
    return deploy, hashlib.sha256(data).hexdigest()


def _surgery_to_file(model_path: Path, output: Path | None, options: _SurgeryOptions, console: Console) -> Path:
    from maskrt.convert.surgery import surgery_to_file

    deploy = output or model_path.with_name("deploy.onnx")  # checked by convert() before the export was read
    surgery_to_file(
        model_path,
        deploy,
        plugins=options.plugins,
        input_size=options.input_size,
        overrides=options.overrides,
        console=console,
        default_anchors=options.default_anchors,
        single_input=options.single_input,
    )
    return deploy


def _calibration_feeds(
    deploy: onnx.ModelProto, calibration: CalibrationOptions, record: dict[str, Any], console: Console
) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """The deploy graph's calibration batches from the calibration images, and the names of the images used."""
    from maskrt.calib.calibration import calibration_set, feeds

    assert calibration.images is not None  # _check_calibration refused int8 without images
    images = calibration_set(
        calibration.images,
        calibration.count,
        calibration.seed,
        tuple(record["input_size"]),
        tuple(record["image_mean"]),
        annotations=calibration.annotations,
        console=console,
    )
    batches = feeds(images, int(record["batch"]), [graph_input.name for graph_input in deploy.graph.input], console)
    return batches, images.names


def _precision_graph(
    deploy: onnx.ModelProto,
    form: str,
    calibration: CalibrationOptions,
    record: dict[str, Any],
    deploy_sha256: str,
    console: Console,
) -> onnx.ModelProto:
    """The AutoCast FP16 or the Q/DQ INT8 graph of the deploy graph; its "maskrt.precision" record also names the
    deploy graph it came from."""
    if form == "autocast":
        console.print("casting the deploy graph to FP16 (ModelOpt AutoCast), box coordinates kept FP32")
        result = autocast_fp16(deploy)
    else:
        batches, _ = _calibration_feeds(deploy, calibration, record, console)
        result = quantize_int8(deploy, batches, calibration.method, console)
    about = read_metadata(result, PRECISION_METADATA_KEY)
    write_metadata(result, PRECISION_METADATA_KEY, {**about, "deploy_sha256": deploy_sha256})
    return result


def _legacy_calibration(
    engine: Path,
    deploy: onnx.ModelProto,
    deploy_sha256: str | None,
    calibration: CalibrationOptions,
    record: dict[str, Any],
    console: Console,
) -> LegacyCalibration:
    assert deploy_sha256 is not None  # legacy calibration takes an export or a deploy graph, whose sha256 is known
    batches, names = _calibration_feeds(deploy, calibration, record, console)
    return LegacyCalibration(batches, _calibration_cache_path(engine), calibration_cache_key(deploy_sha256, names))


def _engine_record(record: dict[str, Any], precision: str, deploy: onnx.ModelProto, deploy_sha256: str) -> dict[str, Any]:
    """What model.engine.json says about the model (build_engine adds TensorRT's and the GPU's part)."""
    inputs = [graph_input.name for graph_input in deploy.graph.input]
    copied = ("plugins", "plugin_namespace", "plugin_version", "batch", "input_size")
    described = ("image_mean", "image_std", "num_classes", "class_names", "mask_size", "settings")
    return {
        "precision": precision,
        **{key: record[key] for key in copied},
        "single_input": bool(record.get("single_input", "image_sizes" not in inputs)),
        **{key: record[key] for key in described},
        "source_sha256": record["source_sha256"],
        "deploy_sha256": deploy_sha256,
    }

