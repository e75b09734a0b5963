"""Engine build: an ONNX graph → model.engine and model.engine.json with TensorRT (docs/design.md, "Precision",
"Engines").

The one module of convert/ that needs TensorRT and a GPU; it imports them when called. What the installed TensorRT can
do is read from its module rather than from its version number: TensorRT 8.5 to 10 build weakly typed networks with
precision flags (FP16 with the box layers held at FP32 by per-layer precision; INT8 from a Q/DQ graph, or from the
deploy graph with IInt8EntropyCalibrator2), TensorRT 11 builds strongly typed networks only (the AutoCast FP16 graph,
the Q/DQ graph). Polygraphy's loaders make the builder config (CreateConfig, PostprocessConfig for the DLA core), the
legacy calibrator (Calibrator) and the serialized engine with its timing cache (EngineBytesFromNetwork). Written out
here, where Polygraphy has no loader for the need: the parse (so that a parser error names its node), the per-layer
FP32 precisions, the progress monitor and logger (which print through maskrt's console), and the engine and its json,
written as a pair.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from maskrt.contracts.errors import BadInput
from maskrt.contracts.precisions import DEPLOY, PRECISIONS
from maskrt.contracts.records import DeployRecord, EngineRecord, engine_record_json, engine_record_path
from maskrt.contracts.tensorrt import TensorRT
from maskrt.plugins import failures
from maskrt.plugins.cuda import check_cuda, loading
from maskrt.runtime.progress import LOG_INTERVAL_S
from maskrt.runtime.tensorrt_log import tensorrt_logger

if TYPE_CHECKING:
    import onnx
    import tensorrt as trt



@dataclass(frozen=True)
class BuildOptions:
    """The builder settings of `trt-convert` that do not change which graph is built."""

    workspace_gib: float = 4.0
    timing_cache: Path | None = None  # default: one per TensorRT version and GPU under ~/.cache/maskrt/tensorrt
    dla_core: int | None = None
    opt_level: int | None = None  # BuilderConfig.builder_optimization_level, 0-5 (TensorRT >= 8.6)
    verbose: bool = False


@dataclass(frozen=True)
class Recipe:
    """Which graph TensorRT parses and how the builder treats its types."""

    graph: str  # the form TensorRT parses: contracts.precisions' DEPLOY, AUTOCAST or QDQ
    strongly_typed: bool
    fp16: bool = False  # BuilderFlag.FP16
    int8: bool = False  # BuilderFlag.INT8
    hold_fp32: bool = False  # fp32_node_names' layers kept FP32 by per-layer precision + OBEY_PRECISION_CONSTRAINTS
    calibrate: bool = False  # IInt8EntropyCalibrator2 on the deploy graph (--int8-calibrator legacy)


@dataclass(frozen=True)
class LegacyCalibration:
    """The calibration batches of `--int8-calibrator legacy` and the cache TensorRT reads them back from."""

    feeds: Sequence[dict[str, np.ndarray]]
    cache: Path  # TensorRT's calibration table, which trtexec --calib also reads
    key: dict[str, str]  # what the cache was made from (graph and images); kept beside it as <cache>.json


def missing_builder(tensorrt: TensorRT | None) -> str | None:
    """What stops an engine being built here (TensorRT, its builder, a GPU), in words; None when nothing does."""
    if tensorrt is None:
        return "TensorRT, which is not installed here"
    if not tensorrt.builder:
        return f"TensorRT's builder, which this TensorRT {tensorrt.version} (a runtime-only install) does not have"
    import tensorrt as trt

    logger = tensorrt_logger(Console(stderr=True), verbose=False, warnings=False)
    try:
        builder = trt.Builder(logger)
    except (RuntimeError, TypeError):  # pybind11 raises TypeError when the factory returns nullptr
        builder = None
    if builder is None:
        return f"a GPU, which TensorRT {tensorrt.version} could not use ({_first(logger.errors, 'no CUDA device')})"
    return None


def recipe(precision: str, calibrator: str, given: str, tensorrt: TensorRT | None) -> Recipe:
    """How to build `precision` from a graph in form `given` ("deploy", "autocast", "qdq") with `tensorrt`.

    None for `tensorrt` means the engine is built elsewhere (--onnx-only, or no TensorRT or GPU here): then the graph
    is the typed form that every supported TensorRT builds, and the build there adds the flags its version needs."""
    mode = PRECISIONS[precision]
    if calibrator == "legacy":
        return Recipe(DEPLOY, strongly_typed=False, fp16=True, int8=True, hold_fp32=True, calibrate=True)
    if tensorrt is None or not tensorrt.weak_typing:
        return Recipe(mode.typed_graph, strongly_typed=True)
    if given == mode.typed_graph != mode.weak_graph and tensorrt.strong_typing:
        return Recipe(mode.typed_graph, strongly_typed=True)
    # A typed graph on 8.5/8.6 (no strong typing) is built like the weak form: its types become hints.
    graph = given if given == mode.typed_graph else mode.weak_graph
    flags = mode.builder_flags
    return Recipe(graph, strongly_typed=False, fp16="FP16" in flags, int8="INT8" in flags, hold_fp32=mode.hold_fp32)


def check_recipe(path: Path, precision: str, calibrator: str, plugins: str, options: BuildOptions, tensorrt: TensorRT | None) -> None:
    """Refuses, before any work, what the installed TensorRT cannot do with these settings."""
    if calibrator == "legacy" and precision != "int8":
        raise BadInput(f"{path}: --int8-calibrator legacy is for --precision int8, not {precision}")
    if tensorrt is None:
        return
    if calibrator == "legacy" and not tensorrt.legacy_calibrator:
        raise BadInput(
            f"{path}: TensorRT {tensorrt.version} has no IInt8EntropyCalibrator2 (TensorRT 11 builds INT8 from Q/DQ "
            "graphs only): use --int8-calibrator qdq, the default"
        )
    if plugins == "maskrt" and not tensorrt.plugins_v3:
        raise BadInput(
            f"{path}: a --plugins maskrt graph needs TensorRT >= 10 (IPluginV3); TensorRT {tensorrt.version} is "
            "installed: convert with --plugins native"
        )
    if options.opt_level is not None and tensorrt.builder and not tensorrt.optimization_level:
        raise BadInput(f"{path}: --opt-level needs TensorRT >= 8.6; TensorRT {tensorrt.version} is installed")


def batch_profile(
    inputs: Sequence[tuple[str, Sequence[int | str | None]]], deploy: DeployRecord
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None:
    """The optimization profile of a dynamic-batch graph, (min, opt, max) shapes per input whose first dimension is
    the batch (images, image_sizes, and the pooled features a dense part reads): the DeployRecord's batch range, the
    other dimensions as they are. None for a static graph, which needs no profile."""
    if not deploy.dynamic_batch:
        return None
    low, opt, high = deploy.batch_range()
    profile = {}
    for name, shape in inputs:
        rest = tuple(shape[1:])
        if not shape or isinstance(shape[0], int) and shape[0] >= 0:
            continue
        if not all(isinstance(d, int) and d >= 0 for d in rest):
            raise BadInput(f"input {name} has the shape {list(shape)}: only its first dimension, the batch, may be dynamic")
        static = tuple(int(d) for d in rest)  # type: ignore[arg-type]
        profile[name] = ((low, *static), (opt, *static), (high, *static))
    return profile


def trtexec_advice(
    onnx_path: Path,
    engine_path: Path,
    recipe: Recipe,
    plugins: str,
    options: BuildOptions,
    profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None = None,
) -> str:
    """How to build `onnx_path` elsewhere: the trtexec command line that builds it as trt-convert would (with the
    optimization `profile` of a dynamic-batch graph), or why trtexec cannot."""
    if plugins == "maskrt":
        return (
            "trtexec cannot build it: maskrt's plugins are Python (no --pluginLibrary or --staticPlugins library holds "
            "them), so run trt-convert where TensorRT >= 10 is, or convert with --plugins native for trtexec"
        )
    if recipe.calibrate:
        return "trtexec cannot calibrate from images: run trt-convert where TensorRT 8.5 to 10 is, or use --int8-calibrator qdq"
    words = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    typed = recipe.strongly_typed and recipe.graph != "deploy"
    words += ["--stronglyTyped"] * typed + ["--fp16"] * recipe.fp16 + ["--int8"] * recipe.int8
    words.append("--noTF32")  # trtexec enables TF32 unless told; trt-convert's engines are IEEE FP32 where FP32
    words.append(f"--memPoolSize=workspace:{round(options.workspace_gib * 1024)}")
    if options.timing_cache is not None:
        words.append(f"--timingCacheFile={options.timing_cache}")
    if options.dla_core is not None:
        words += [f"--useDLACore={options.dla_core}", "--allowGPUFallback"]
    if options.opt_level is not None:
        words.append(f"--builderOptimizationLevel={options.opt_level}")
    if profile:
        for flag, which in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
            words.append(f"{flag}=" + ",".join(f"{name}:{'x'.join(map(str, shapes[which]))}" for name, shapes in profile.items()))
    notes = []
    if typed:
        notes.append("TensorRT 8.5 and 8.6 have no --stronglyTyped: there, run trt-convert on this graph")
    if recipe.hold_fp32:
        notes.append("trtexec cannot hold the box layers at FP32 by node name as trt-convert does")
    return "or build it elsewhere with: " + " ".join(words) + "".join(f" ({note})" for note in notes)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    recipe: Recipe,
    options: BuildOptions,
    deploy: DeployRecord,
    precision: str,
    deploy_sha256: str | None,
    console: Console,
    fp32_nodes: Sequence[str] = (),
    calibration: LegacyCalibration | None = None,
) -> EngineRecord:
    """Builds `onnx_path` as `recipe` says and writes engine_path with <engine>.json beside it (both or neither): the
    model the engine answers for (`deploy`, from the deploy graph `deploy_sha256`), its precision, the TensorRT
    version, the GPU and the sha256 of the graph built. Returns that record."""
    import onnx
    import tensorrt as trt

    data = onnx_path.read_bytes()
    model = onnx.load_from_string(data)
    if deploy.plugins == "maskrt":
        from maskrt.plugins import register

        register()
    logger = tensorrt_logger(console, options.verbose, warnings=False)
    builder = trt.Builder(logger)
    if options.dla_core is not None and options.dla_core >= builder.num_DLA_cores:
        raise BadInput(f"{onnx_path}: --dla-core {options.dla_core}: this device has {builder.num_DLA_cores} DLA cores")
    network = builder.create_network(_network_flags(recipe))
    if hasattr(trt, "init_libnvinfer_plugins"):  # ROIAlign_TRT, which TensorRT's parser makes of ONNX RoiAlign
        trt.init_libnvinfer_plugins(logger, "")
    parser = trt.OnnxParser(network, logger)
    _parse(parser, data, onnx_path, model, logger)
    held = _hold_fp32(network, fp32_nodes, [node.name for node in model.graph.node]) if recipe.hold_fp32 else 0
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    profile = batch_profile([(tensor.name, [tensor.shape[d] for d in range(len(tensor.shape))]) for tensor in inputs], deploy)
    gpu, compute_capability = _gpu_or_warn(console)
    timing_cache = options.timing_cache or _default_timing_cache(trt.__version__, gpu)
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    flags = [name for name, on in (("FP16", recipe.fp16), ("INT8", recipe.int8)) if on]
    low, opt, high = deploy.batch_range()
    console.print(
        f"building the {precision} engine from {onnx_path} with TensorRT {trt.__version__} "
        f"({'strongly typed' if recipe.strongly_typed else ' + '.join(flags) or 'FP32'}"
        f"{f', {held} layers held at FP32' if held else ''}"
        f"{f', batch {low} to {high} tuned for {opt}' if profile else ''}; minutes on a Jetson)"
    )
    started = time.perf_counter()
    with _polygraphy_log(options.verbose), _calibration_cache(calibration, console) as cache_work, _build_progress(
        console
    ) as monitor:
        config = _config(recipe, options, timing_cache, calibration, cache_work, monitor, profile)
        try:
            serialized = _serialize(network, builder, parser, config, timing_cache, onnx_path, logger)
        except ValueError:
            if monitor is not None and monitor.stopped_by is not None:
                raise monitor.stopped_by from None  # Ctrl-C's KeyboardInterrupt, or SIGTERM's Terminated
            raise
    record = EngineRecord(
        deploy=deploy,
        tensorrt_version=trt.__version__,
        gpu=gpu,
        compute_capability=compute_capability,
        precision=precision,
        maskrt_version=importlib.metadata.version("maskrt"),
        deploy_sha256=deploy_sha256,
        onnx_sha256=hashlib.sha256(data).hexdigest(),
        engine_bytes=len(serialized),
    )
    record_path = engine_record_path(engine_path)
    write_pair(engine_path, serialized, record_path, engine_record_json(record))
    console.print(
        f"wrote {engine_path} ({len(serialized) / 1e6:.1f} MB) and {record_path.name} in "
        f"{time.perf_counter() - started:.0f} s" + (f", for {gpu} (sm_{compute_capability})" if gpu else "")
    )
    return record


def write_pair(first: Path, first_data: bytes, second: Path, second_data: bytes) -> None:
    """Writes two files that belong together (an engine and its json) so that both appear or neither does."""
    temps = [path.with_name(f".{path.name}.tmp{os.getpid()}") for path in (first, second)]
    try:
        for temp, data in zip(temps, (first_data, second_data)):
            temp.write_bytes(data)
        os.replace(temps[0], first)
        try:
            os.replace(temps[1], second)
        except OSError:
            first.unlink()
            raise
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def calibration_cache_key(graph_sha256: str, names: Sequence[str]) -> dict[str, str]:
    """What a legacy calibration cache was made from: the graph TensorRT calibrated and the images it was fed."""
    return {"graph_sha256": graph_sha256, "images_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()}


def reusable_calibration_cache(cache: Path, key: dict[str, str], console: Console) -> bytes | None:
    """The cache's contents when its recorded key is `key`; otherwise None, with a warning saying why it is rebuilt."""
    if not cache.is_file():
        return None
    record = cache.with_name(cache.name + ".json")
    try:
        recorded = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None
    if recorded == key:
        return cache.read_bytes()
    if isinstance(recorded, dict) and recorded.get("graph_sha256") not in (None, key["graph_sha256"]):
        why = f"was made for another graph (sha256 {str(recorded['graph_sha256'])[:12]}, this one is {key['graph_sha256'][:12]})"
    elif isinstance(recorded, dict) and recorded.get("images_sha256") not in (None, key["images_sha256"]):
        why = "was made from other calibration images"
    else:
        why = f"has no readable record of what it was made from ({record.name})"
    console.print(f"{cache}: the calibration cache {why}; calibrating again", style="yellow")
    return None


def _network_flags(recipe: Recipe) -> int:
    import tensorrt as trt

    creation = trt.NetworkDefinitionCreationFlag
    if recipe.strongly_typed:
        # TensorRT 11 has only strongly typed networks and may drop the flag that asks for one.
        return 1 << int(creation.STRONGLY_TYPED) if hasattr(creation, "STRONGLY_TYPED") else 0
    if int(trt.__version__.split(".")[0]) < 10:
        return 1 << int(creation.EXPLICIT_BATCH)  # what TensorRT 8.5/8.6 need spelled out and 10 always does
    return 0


def _parse(parser: trt.OnnxParser, data: bytes, path: Path, model: onnx.ModelProto, logger: Any) -> None:
    """Parses the graph; a refusal names the node (by its index, which every TensorRT version reports) and says why."""
    failures.clear()
    if parser.parse(data, str(path)):  # the path lets the parser find external weights, as parse_from_file would
        return
    plugin = failures.take()  # a plugin node that broke its contract, named by the plugin's creator
    if plugin is not None:
        raise BadInput(f"{path}: {plugin}")
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    if not errors:
        raise BadInput(f"{path}: TensorRT's ONNX parser refused it: {_first(logger.errors, 'no reason given')}")
    first = errors[0]
    index = first.node()
    where = ""
    if 0 <= index < len(model.graph.node):
        node = model.graph.node[index]
        where = f" node '{node.name}' ({node.op_type})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise BadInput(f"{path}: TensorRT's ONNX parser refused{where}: {first.desc()}{more}")


def _layer_node(layer: trt.ILayer, node_names: set[str]) -> str | None:
    """The ONNX node a layer was made for: from its metadata on TensorRT >= 10, else from its name, which the parser
    gives the node's name (with _N appended when a node makes several layers); None for the parser's helper layers."""
    tagged = re.match(r"\[ONNX Layer: (.*?)(?: \|.*)?\]$", getattr(layer, "metadata", "") or "")
    if tagged:
        return tagged.group(1)
    name = layer.name
    while name not in node_names:
        stripped = re.sub(r"_\d+$", "", name)
        if stripped == name:
            return None
        name = stripped
    return name


def held_layers(network: trt.INetworkDefinition, fp32_nodes: Sequence[str], node_names: Sequence[str]) -> list[int]:
    """Indices of the layers to hold at FP32: those made for `fp32_nodes`, and the parser's helper layers (constants,
    broadcasts, casts) that read from a held layer or write into one."""
    wanted, names = set(fp32_nodes), set(node_names)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    nodes = [_layer_node(layer, names) for layer in layers]
    held = {i for i, node in enumerate(nodes) if node in wanted}
    held_outputs = {layers[i].get_output(j).name for i in held for j in range(layers[i].num_outputs)}
    held_inputs = {
        layers[i].get_input(j).name for i in held for j in range(layers[i].num_inputs) if layers[i].get_input(j) is not None
    }
    for i, (layer, node) in enumerate(zip(layers, nodes)):
        if node is not None or i in held:
            continue
        inputs = {layer.get_input(j).name for j in range(layer.num_inputs) if layer.get_input(j) is not None}
        outputs = {layer.get_output(j).name for j in range(layer.num_outputs)}
        if inputs & held_outputs or outputs & held_inputs:
            held.add(i)
    return sorted(held)


def _hold_fp32(network: trt.INetworkDefinition, fp32_nodes: Sequence[str], node_names: Sequence[str]) -> int:
    """Per-layer FP32 for the layers of fp32_nodes (TensorRT <= 10, with OBEY_PRECISION_CONSTRAINTS); returns how many."""
    import tensorrt as trt

    floating = (trt.DataType.FLOAT, trt.DataType.HALF)
    count = 0
    for index in held_layers(network, fp32_nodes, node_names):
        layer = network.get_layer(index)
        if layer.type in (trt.LayerType.SHAPE, trt.LayerType.CONSTANT):  # their type is their data's
            continue
        inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
        float_outputs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floating]
        if not float_outputs and not any(t is not None and t.dtype in floating for t in inputs):
            continue
        layer.precision = trt.DataType.FLOAT
        for j in float_outputs:
            layer.set_output_type(j, trt.DataType.FLOAT)
        count += 1
    return count


def _config(
    recipe: Recipe,
    options: BuildOptions,
    timing_cache: Path,
    calibration: LegacyCalibration | None,
    calibration_work: Path | None,
    monitor: Any,
    profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None,
) -> Any:
    """Polygraphy's CreateConfig for the recipe; the DLA core, which CreateConfig always sets to 0, afterwards.

    A dynamic-batch graph gets its one optimization profile (Polygraphy's Profile: create_optimization_profile,
    set_shape, add_optimization_profile, and set_calibration_profile for the legacy calibrator, which calibrates at
    the profile's opt shapes)."""
    import tensorrt as trt
    from polygraphy.backend.trt import Calibrator, CreateConfig, PostprocessConfig, Profile

    settings: dict[str, Any] = {
        # FP32 is IEEE FP32: Polygraphy clears TF32 unless asked, and the trtexec line says --noTF32 to match.
        "tf32": False,
        "memory_pool_limits": {trt.MemoryPoolType.WORKSPACE: int(options.workspace_gib * 2**30)},
        "load_timing_cache": str(timing_cache) if timing_cache.is_file() else None,
        "builder_optimization_level": options.opt_level,
        "progress_monitor": monitor,
    }
    if recipe.fp16:
        settings["fp16"] = True
    if recipe.int8:
        settings["int8"] = True
    if recipe.hold_fp32:
        settings["precision_constraints"] = "obey"
    if calibration is not None and calibration_work is not None:
        settings["calibrator"] = Calibrator(calibration.feeds, cache=str(calibration_work))
    if profile is not None:
        shapes = Profile()
        for name, (low, opt, high) in profile.items():
            shapes.add(name, min=low, opt=opt, max=high)
        settings["profiles"] = [shapes]
    if options.dla_core is None:
        return CreateConfig(**settings)
    core = options.dla_core

    def use_dla_core(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig) -> None:
        config.DLA_core = core

    return PostprocessConfig(CreateConfig(use_dla=True, allow_gpu_fallback=True, **settings), use_dla_core)


def _serialize(
    network: trt.INetworkDefinition,
    builder: trt.Builder,
    parser: trt.OnnxParser,
    config: Any,
    timing_cache: Path,
    path: Path,
    logger: Any,
) -> bytes:
    """Polygraphy's EngineBytesFromNetwork, which also merges this build's timings into the timing cache."""
    from polygraphy.backend.trt import EngineBytesFromNetwork
    from polygraphy.exception import PolygraphyException

    build = EngineBytesFromNetwork((builder, network, parser), config=config, save_timing_cache=str(timing_cache))
    try:
        serialized = build()
    except PolygraphyException as error:
        reason = failures.take() or _first(logger.errors, str(error).splitlines()[0])
        raise BadInput(f"{path}: TensorRT could not build the engine: {reason}") from None
    return bytes(serialized)


@contextlib.contextmanager
def _polygraphy_log(verbose: bool) -> Iterator[None]:
    """Polygraphy's own messages, which it prints to stdout: on stderr and uncoloured with --verbose, else nowhere."""
    from polygraphy.logger import G_LOGGER

    colors = G_LOGGER.colors
    G_LOGGER.colors = False
    try:
        with G_LOGGER.verbosity(G_LOGGER.INFO if verbose else G_LOGGER.CRITICAL + 1), contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        G_LOGGER.colors = colors


@contextlib.contextmanager
def _calibration_cache(calibration: LegacyCalibration | None, console: Console) -> Iterator[Path | None]:
    """A working copy of a reusable calibration cache for Polygraphy's Calibrator; after a build that filled it, the
    cache and its key are replaced together."""
    if calibration is None:
        yield None
        return
    cache = calibration.cache
    work = cache.with_name(f".{cache.name}.work{os.getpid()}")
    reusable = reusable_calibration_cache(cache, calibration.key, console)
    work.write_bytes(reusable or b"")
    console.print(f"{cache}: {'reusing the calibration cache' if reusable else f'calibrating on {len(calibration.feeds)} batches'}")
    try:
        yield work
        if work.stat().st_size:
            write_pair(cache, work.read_bytes(), cache.with_name(cache.name + ".json"), json.dumps(calibration.key).encode())
    finally:
        with contextlib.suppress(FileNotFoundError):
            work.unlink()


@contextlib.contextmanager
def _build_progress(console: Console) -> Iterator[Any]:
    """TensorRT's IProgressMonitor (>= 10) as rich progress bars on a terminal and as lines in a log; None on 8.5/8.6.

    Ctrl-C during the build cancels it at the next step instead of being lost inside TensorRT."""
    import tensorrt as trt

    if not hasattr(trt, "IProgressMonitor"):
        yield None
        return
    progress = (
        Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        if console.is_terminal
        else None
    )

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            # TensorRT calls a progress monitor from its own threads ("must be thread-safe", IProgressMonitor).
            self.lock = threading.Lock()
            self.stopped_by: KeyboardInterrupt | None = None  # the interrupt that cancelled the build
            self.phases: dict[str, tuple[TaskID | None, int, float, int]] = {}  # task, steps, start, depth
            self.last_line = time.perf_counter()

        @contextlib.contextmanager
        def within_tensorrt(self) -> Iterator[None]:
            """TensorRT calls these methods: nothing may cross back into it. Ctrl-C or SIGTERM is kept, and cancels the
            build at the next step; any other failure only costs the progress display."""
            try:
                with self.lock:
                    yield
            except KeyboardInterrupt as interrupt:
                self.stopped_by = interrupt
            except Exception:  # noqa: BLE001
                pass

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self.within_tensorrt():
                depth = self.phases[parent_phase][3] + 1 if parent_phase in self.phases else 0
                description = f"building: {'  ' * depth}{phase_name}"
                task = progress.add_task(description, total=num_steps) if progress is not None else None
                self.phases[phase_name] = (task, num_steps, time.perf_counter(), depth)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self.within_tensorrt():
                task, steps, started, depth = self.phases[phase_name]
                if progress is not None and task is not None:
                    progress.update(task, completed=step + 1)
                elif time.perf_counter() - self.last_line >= LOG_INTERVAL_S:
                    console.print(f"building: {phase_name} {step + 1}/{steps}")
                    self.last_line = time.perf_counter()
            return self.stopped_by is None

        def phase_finish(self, phase_name: str) -> None:
            with self.within_tensorrt():
                task, _, started, depth = self.phases.pop(phase_name)
                if progress is not None and task is not None:
                    progress.remove_task(task)
                elif depth == 0:
                    console.print(f"building: {phase_name} done in {time.perf_counter() - started:.1f} s")

    with progress if progress is not None else contextlib.nullcontext():
        yield Monitor()


def _default_timing_cache(version: str, gpu: str | None) -> Path:
    """One timing cache per TensorRT version and GPU, so that every build on this machine reuses the timings."""
    from maskrt.plugins.kernel_build import cache_dir

    label = re.sub(r"[^A-Za-z0-9.]+", "-", gpu or "gpu")
    return cache_dir() / "tensorrt" / f"timing-{version}-{label}.cache"


def _gpu_or_warn(console: Console) -> tuple[str | None, str | None]:
    """The GPU's name and compute capability for the json; a failure to read them never stops or loses the engine."""
    try:
        return _gpu()
    except Exception as error:  # cuda-python missing, or any driver error
        console.print(
            f"could not read the GPU's name ({type(error).__name__}: {error}); the engine's json records none",
            style="yellow",
        )
        return None, None


def _gpu() -> tuple[str, str]:
    """Name and compute capability ("87") of GPU 0, the one TensorRT built for: from cuda-python, else from pycuda,
    which is what a Jetson's runtime has."""
    try:
        from cuda.bindings import driver
    except ImportError:
        import pycuda.driver as cuda

        cuda.init()
        device = cuda.Device(0)
        major, minor = device.compute_capability()
        return device.name(), f"{major}{minor}"

    with loading("the NVIDIA driver library (libcuda)", "the engine's json records no GPU"):
        initialised = driver.cuInit(0)
    check_cuda(initialised, "initialising CUDA")
    device = check_cuda(driver.cuDeviceGet(0), "finding GPU 0")
    name = check_cuda(driver.cuDeviceGetName(64, device), "reading GPU 0's name").split(b"\0", 1)[0].decode()
    attribute = driver.CUdevice_attribute
    major = check_cuda(driver.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device), "reading GPU 0's architecture")
    minor = check_cuda(driver.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device), "reading GPU 0's architecture")
    return str(name), f"{major}{minor}"


def _first(errors: list[str], otherwise: str) -> str:
    """The first error TensorRT logged, the one that says why; `otherwise` when it logged none."""
    return errors[0] if errors else otherwise
