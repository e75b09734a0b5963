"""`write_triton_repository(model, output)`: a model repository for NVIDIA's Triton Inference Server container.

A native-mode deploy graph or engine (`--plugins native`) becomes an ensemble named MODEL_NAME (default "maskrt"):

    MODEL_NAME_preprocess (python)      encoded images / RGB arrays → images [B,3,H,W], image_sizes [B,2], original_sizes
    MODEL_NAME_graph (onnxruntime_onnx for a .onnx, tensorrt_plan for a .engine: the deploy graph's raw inputs/outputs)
    MODEL_NAME_postprocess (python)     num_detections, boxes, scores, classes, masks → detections in each image's pixels

so a client sends images and gets detections, with `maskrt serve`'s requests and responses (serve.protocol; the
ensemble answers COCO RLE masks, not full masks). The graph is run at its static batch B: one request holds 1 to B
images. A plugin-mode graph or engine needs Python at run time (Triton's TensorRT and ONNX Runtime backends cannot
load maskrt's Python plugins), so it becomes one Python-backend model MODEL_NAME running the Predictor, with
Triton's dynamic batcher, as `maskrt serve` runs it.

The Python-backend models import maskrt (`pip install maskrt` in the container's Python; `maskrt[tensorrt]` for
engines). `local_tritonserver()` runs a repository in nvidia-pytriton's tritonserver, which has the Python backend
only: the Python-backend models load and answer there, the TensorRT and ONNX Runtime members are checked against
Triton's model_config schema only (tests/test_triton_repository.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from maskrt.contracts.errors import BadInput
from maskrt.contracts.files import check_input_path, check_new_folder, read_onnx, staged_folder
from maskrt.contracts.records import (
    DEPLOY_KEY,
    engine_record_path,
    read_deploy_record,
    read_engine_record,
    read_precision_record,
)
from maskrt.runtime.backends import ModelInfo
from maskrt.serve import defaults, protocol
from maskrt.serve.stub import stub_environment

DEFAULT_MODEL_NAME = defaults.MODEL_NAME
SETTINGS_FILE = "maskrt.json"
GRAPH_OUTPUTS = ("num_detections", "boxes", "scores", "classes", "masks")
# ONNX TensorProto element types → Triton's data types
ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 2: "TYPE_UINT8"}
TRITON_TO_NUMPY = {"TYPE_FP32": "float32", "TYPE_FP16": "float16"}


@dataclass(frozen=True)
class Tensor:
    """One input or output of a model config."""

    name: str
    data_type: str  # TYPE_FP32, ...
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class RepositoryModel:
    """What the repository needs to know of the deploy graph or engine."""

    path: Path
    kind: str  # "onnx" or "engine"
    info: ModelInfo
    detections: int  # K
    inputs: tuple[Tensor, ...]  # the graph's, full static shapes
    outputs: tuple[Tensor, ...]

    @property
    def native(self) -> bool:
        return self.info.plugins == "native"


def describe_model(model: Path) -> RepositoryModel:
    """The deploy graph's (or engine's) record and inputs and outputs; ValueError naming the file."""
    check_input_path(model, "a deploy graph (.onnx) or an engine (.engine)")
    if model.suffix == ".onnx":
        graph = read_onnx(model, "a deploy graph (.onnx)")
        record = read_deploy_record(graph, model)
        if record is None:
            raise BadInput(f"{model}: not a maskrt deploy graph (no {DEPLOY_KEY} metadata); make one with trt-convert --surgery-only")
        initializers = {t.name for t in graph.graph.initializer}
        inputs = tuple(_tensor(value) for value in graph.graph.input if value.name not in initializers)
        outputs = tuple(_tensor(value) for value in graph.graph.output)
        precision = read_precision_record(graph, model)
        single_input = all(t.name != "image_sizes" for t in inputs)
        info = ModelInfo.of(record, precision.precision if precision else "fp32", single_input)
        kind = "onnx"
    elif model.suffix == ".engine":
        engine_record = read_engine_record(model)
        if engine_record is None:
            raise BadInput(f"{model}: no {engine_record_path(model).name} beside it; the repository needs what trt-convert records there")
        info = ModelInfo.of(engine_record.deploy, engine_record.precision, engine_record.deploy.single_input)
        inputs, outputs = _engine_tensors(info, engine_record.deploy.settings.detections_per_img)
        kind = "engine"
    else:
        raise BadInput(f"{model}: expected a deploy graph (.onnx) or a TensorRT engine (.engine)")
    names = [t.name for t in outputs]
    if names != list(GRAPH_OUTPUTS) and sorted(names) != sorted(GRAPH_OUTPUTS):
        raise BadInput(f"{model}: outputs {names}, expected the deploy graph's {', '.join(GRAPH_OUTPUTS)} (a --layout deepstream graph is for DeepStream)")
    detections = int(dict((t.name, t.dims) for t in outputs)["scores"][1])
    return RepositoryModel(path=model, kind=kind, info=info, detections=detections, inputs=inputs, outputs=outputs)


def _tensor(value: Any) -> Tensor:
    elem = value.type.tensor_type.elem_type
    if elem not in ONNX_TO_TRITON:
        raise BadInput(f"tensor '{value.name}': ONNX type {elem} has no Triton type here")
    dims = tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
    return Tensor(value.name, ONNX_TO_TRITON[elem], dims)


def _engine_tensors(info: ModelInfo, detections: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """An engine's inputs and outputs, from its record: the deploy graph's, which the engine keeps (FP32 and INT32
    at its inputs and outputs whatever its precision)."""
    batch, (height, width), masks = info.batch, info.input_size, info.mask_size
    inputs = [Tensor("images", "TYPE_FP32", (batch, 3, height, width))]
    if not info.single_input:
        inputs.append(Tensor("image_sizes", "TYPE_INT32", (batch, 2)))
    outputs = (
        Tensor("num_detections", "TYPE_INT32", (batch, 1)),
        Tensor("boxes", "TYPE_FP32", (batch, detections, 4)),
        Tensor("scores", "TYPE_FP32", (batch, detections)),
        Tensor("classes", "TYPE_INT32", (batch, detections)),
        Tensor("masks", "TYPE_FP32", (batch, detections, masks, masks)),
    )
    return tuple(inputs), outputs


# ---- config.pbtxt text ------------------------------------------------------------------------------------------


def _tensor_text(tensor: Tensor) -> str:
    optional = " optional: true" if tensor.optional else ""
    return f'  {{ name: "{tensor.name}" data_type: {tensor.data_type} dims: [ {", ".join(map(str, tensor.dims))} ]{optional} }}'


def _tensors_text(kind: str, tensors: Sequence[Tensor]) -> str:
    return f"{kind} [\n" + ",\n".join(_tensor_text(t) for t in tensors) + "\n]"


def config_text(
    name: str,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    backend: str | None = None,
    platform: str | None = None,
    max_batch_size: int = 0,
    extra: Sequence[str] = (),
) -> str:
    """One model's config.pbtxt (Triton's model_config.proto, text format)."""
    lines = [f'name: "{name}"']
    if backend is not None:
        lines.append(f'backend: "{backend}"')
    if platform is not None:
        lines.append(f'platform: "{platform}"')
    lines += [f"max_batch_size: {max_batch_size}", _tensors_text("input", inputs), _tensors_text("output", outputs), *extra]
    return "\n".join(lines) + "\n"


def request_inputs(batched: bool) -> list[Tensor]:
    """serve.protocol's inputs; `batched`: dims without the batch dimension (max_batch_size > 0)."""
    if batched:
        return [Tensor(protocol.IMAGE_INPUT, "TYPE_STRING", (1,), True), Tensor(protocol.PIXELS_INPUT, "TYPE_UINT8", (-1, -1, 3), True)]
    return [Tensor(protocol.IMAGE_INPUT, "TYPE_STRING", (-1, 1), True), Tensor(protocol.PIXELS_INPUT, "TYPE_UINT8", (-1, -1, -1, 3), True)]


def response_outputs(batched: bool, full_masks: bool) -> list[Tensor]:
    """serve.protocol's outputs (the full masks only where asked for)."""
    lead: tuple[int, ...] = () if batched else (-1,)
    outputs = [
        Tensor("num_detections", "TYPE_INT32", (*lead, 1)),
        Tensor("boxes", "TYPE_FP32", (*lead, -1, 4)),
        Tensor("scores", "TYPE_FP32", (*lead, -1)),
        Tensor("labels", "TYPE_INT64", (*lead, -1)),
        Tensor("class_names", "TYPE_STRING", (*lead, -1)),
        Tensor("masks_rle", "TYPE_STRING", (*lead, -1)),
        Tensor("image_size", "TYPE_INT32", (*lead, 2)),
    ]
    if full_masks:
        outputs.append(Tensor(protocol.FULL_MASKS, "TYPE_BOOL", (*lead, -1, -1, -1)))
    return outputs


def _instances(count: int, kind: str) -> str:
    return f"instance_group [ {{ kind: {kind} count: {count} }} ]"


def _python_model_file(class_name: str) -> str:
    return (
        f'"""maskrt\'s {class_name} for Triton\'s Python backend (maskrt.serve.triton_models); needs `pip install maskrt`."""\n\n'
        f"from maskrt.serve.triton_models import {class_name} as TritonPythonModel  # noqa: F401\n"
    )


# ---- the repository ---------------------------------------------------------------------------------------------


def write_triton_repository(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    console: Console | None = None,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    instances: int = 1,
    max_queue_delay_us: int = defaults.MAX_QUEUE_DELAY_US,
    score_threshold: float = 0.5,
    max_image_pixels: int = protocol.MAX_IMAGE_PIXELS,
    threads: int | None = None,
) -> Path:
    """Writes the repository (module docstring) for `model` into `output`, a new or empty folder, whole or not at
    all. ValueError naming the file or argument and what is wrong."""
    source, folder = Path(model), Path(output)
    if instances < 1:
        raise BadInput(f"--instances {instances}: at least 1")
    if max_queue_delay_us < 0:
        raise BadInput(f"--max-queue-delay-us {max_queue_delay_us}: 0 or more microseconds")
    if not 0.0 <= score_threshold <= 1.0:
        raise BadInput(f"--score-threshold {score_threshold}: between 0 and 1")
    if not model_name or "/" in model_name or model_name.startswith("."):
        raise BadInput(f"--model-name {model_name!r}: a folder name")
    described = describe_model(source)
    check_new_folder(folder)
    with staged_folder(folder) as staging:
        settings = {
            "info": asdict(described.info),
            "score_threshold": score_threshold,
            "max_image_pixels": max_image_pixels,
            "threads": threads,
            "source": source.name,
        }
        if described.native:
            written = _write_ensemble(staging, described, model_name, instances, settings)
        else:
            written = _write_predictor_model(staging, described, model_name, instances, max_queue_delay_us, settings)
        (staging / "README.md").write_text(_readme(described, model_name, written))
    if console is not None:
        console.print(f"wrote {folder}/: {', '.join(written)} (tritonserver --model-repository {folder})")
    return folder


def _version_folder(repository: Path, name: str) -> Path:
    folder = repository / name / "1"
    folder.mkdir(parents=True)
    return folder


def _write_ensemble(repository: Path, model: RepositoryModel, name: str, instances: int, settings: dict[str, Any]) -> list[str]:
    info = model.info
    pre, graph, post = f"{name}_preprocess", f"{name}_graph", f"{name}_postprocess"
    images = next(t for t in model.inputs if t.name == "images")
    batch = info.batch
    pre_outputs = [
        Tensor("images", images.data_type, images.dims),
        Tensor("image_sizes", "TYPE_INT32", (batch, 2)),
        Tensor("original_sizes", "TYPE_INT32", (-1, 2)),
    ]
    # preprocess
    folder = _version_folder(repository, pre)
    (folder / "model.py").write_text(_python_model_file("PreprocessModel"))
    (folder / SETTINGS_FILE).write_text(json.dumps({**settings, "images_dtype": TRITON_TO_NUMPY[images.data_type]}, indent=2))
    (repository / pre / "config.pbtxt").write_text(
        config_text(pre, request_inputs(False), pre_outputs, backend="python", extra=[_instances(instances, "KIND_CPU")])
    )
    # the graph, as it is
    folder = _version_folder(repository, graph)
    if model.kind == "onnx":
        shutil.copyfile(model.path, folder / "model.onnx")
        graph_config = config_text(graph, model.inputs, model.outputs, platform="onnxruntime_onnx", extra=[_instances(instances, "KIND_AUTO")])
    else:
        shutil.copyfile(model.path, folder / "model.plan")
        graph_config = config_text(graph, model.inputs, model.outputs, platform="tensorrt_plan", extra=[_instances(instances, "KIND_GPU")])
    (repository / graph / "config.pbtxt").write_text(graph_config)
    # postprocess
    post_inputs = [*model.outputs, Tensor("image_sizes", "TYPE_INT32", (batch, 2)), Tensor("original_sizes", "TYPE_INT32", (-1, 2))]
    folder = _version_folder(repository, post)
    (folder / "model.py").write_text(_python_model_file("PostprocessModel"))
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
    (repository / post / "config.pbtxt").write_text(
        config_text(post, post_inputs, response_outputs(False, False), backend="python", extra=[_instances(instances, "KIND_CPU")])
    )
    # the ensemble: images in, detections out
    graph_inputs = {t.name for t in model.inputs}
    steps = [
        _step(pre, {protocol.IMAGE_INPUT: protocol.IMAGE_INPUT, protocol.PIXELS_INPUT: protocol.PIXELS_INPUT},
              {"images": "_images", "image_sizes": "_image_sizes", "original_sizes": "_original_sizes"}),
        _step(graph, {name: f"_{name}" for name in ("images", "image_sizes") if name in graph_inputs},
              {name: f"_{name}" for name in GRAPH_OUTPUTS}),
        _step(post, {**{name: f"_{name}" for name in GRAPH_OUTPUTS}, "image_sizes": "_image_sizes", "original_sizes": "_original_sizes"},
              {t.name: t.name for t in response_outputs(False, False)}),
    ]  # fmt: skip
    _version_folder(repository, name)
    scheduling = "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}"
    (repository / name / "config.pbtxt").write_text(
        config_text(name, request_inputs(False), response_outputs(False, False), platform="ensemble", extra=[scheduling])
    )
    return [name, pre, graph, post]


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    maps += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return f'    {{\n      model_name: "{model}"\n      model_version: -1\n' + "\n".join(maps) + "\n    }"


def _write_predictor_model(
    repository: Path, model: RepositoryModel, name: str, instances: int, max_queue_delay_us: int, settings: dict[str, Any]
) -> list[str]:
    folder = _version_folder(repository, name)
    target = folder / model.path.name
    shutil.copyfile(model.path, target)
    if model.kind == "engine":
        shutil.copyfile(engine_record_path(model.path), engine_record_path(target))
    (folder / "model.py").write_text(_python_model_file("PredictorModel"))
    (folder / SETTINGS_FILE).write_text(json.dumps({**settings, "model_file": target.name}, indent=2))
    batch = model.info.batch
    preferred = f" preferred_batch_size: [ {batch} ]" if batch > 1 else ""
    extra = [
        f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us}{preferred} }}",
        _instances(instances, "KIND_CPU" if model.kind == "onnx" else "KIND_GPU"),
    ]
    (repository / name / "config.pbtxt").write_text(
        config_text(name, request_inputs(True), response_outputs(True, True), backend="python", max_batch_size=batch, extra=extra)
    )
    return [name]


def _readme(model: RepositoryModel, name: str, written: list[str]) -> str:
    info = model.info
    lines = [
        f"# Triton model repository for {model.path.name}",
        "",
        f"maskrt wrote it: {info.plugins} plugins, {info.precision}, batch {info.batch}, input {info.input_size[0]}x{info.input_size[1]}, "
        f"{info.num_classes} classes. Models: {', '.join(written)}.",
        "",
        "    docker run --rm -p8000:8000 -p8001:8001 -p8002:8002 -v $PWD:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\",
        "        bash -c 'pip install maskrt && tritonserver --model-repository /models'",
        "",
        f"Ask for '{name}' with maskrt.serve.protocol's requests (encoded images in `image` BYTES [n,1], or RGB arrays in `pixels`).",
        "The Python-backend models import maskrt: install it in the container's Python (maskrt[tensorrt] for engines).",
    ]
    if model.native:
        lines += [
            f"The graph member ({name}_graph) runs on Triton's {'ONNX Runtime' if model.kind == 'onnx' else 'TensorRT'} backend; "
            "a TensorRT plan runs only on the TensorRT version and GPU it was built for (see its .engine.json).",
            "maskrt's tests load the Python-backend models in nvidia-pytriton's tritonserver (Python backend only) and check "
            "the ONNX Runtime and TensorRT members against Triton's model_config schema only.",
        ]
    else:
        lines.append("A --plugins maskrt graph or engine needs maskrt's Python plugins: the Predictor runs in the Python backend.")
    return "\n".join(lines) + "\n"


# ---- running a repository in PyTriton's tritonserver (Python backend only) --------------------------------------


@dataclass
class LocalServer:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log: Path


@contextlib.contextmanager
def local_tritonserver(
    repository: Path,
    models: Sequence[str],
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    console: Console | None = None,
    address: str = "127.0.0.1",
    timeout_s: float = 120.0,
) -> Iterator[LocalServer]:
    """nvidia-pytriton's tritonserver on `repository`, loading `models` only (its build has the Python backend and no
    other), its stubs running this interpreter with this process's maskrt; stopped (SIGINT, then SIGKILL) afterwards."""
    try:
        from pytriton.utils.distribution import get_libs_path, get_root_module_path, get_stub_path
    except ModuleNotFoundError as error:
        raise BadInput(f"running a repository here needs {error.name}: pip install 'maskrt[serve]'") from None
    import signal

    dist = get_root_module_path() / "tritonserver"
    with tempfile.TemporaryDirectory(prefix="maskrt-triton-") as work, stub_environment(console, with_maskrt=True, library_dirs=[Path(get_libs_path())]) as environment:
        backends = Path(work) / "backends"
        shutil.copytree(dist / "backends", backends)
        shutil.copy(get_stub_path(f"{sys.version_info.major}.{sys.version_info.minor}"), backends / "python" / "triton_python_backend_stub")
        log = Path(work) / "tritonserver.log"
        command = [
            str(dist / "bin" / "tritonserver"), "--model-repository", str(repository), "--backend-directory", str(backends),
            "--model-control-mode", "explicit", *(f"--load-model={m}" for m in models),
            "--http-address", address, "--http-port", str(http_port), "--grpc-address", address, "--grpc-port", str(grpc_port),
            "--metrics-address", address, "--metrics-port", str(metrics_port), "--allow-gpu-metrics", "false",
            "--exit-timeout-secs", "5", "--log-file", str(log),
        ]  # fmt: skip
        process = subprocess.Popen(command, cwd=environment.workdir, env=environment.variables, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        server = LocalServer(process, http_port, grpc_port, log)
        try:
            _wait_ready(server, models, address, timeout_s)
            yield server
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)


def _wait_ready(server: LocalServer, models: Sequence[str], address: str, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            ready = all(
                urllib.request.urlopen(f"http://{address}:{server.http_port}/v2/models/{m}/ready", timeout=2).status == 200 for m in models
            )
        except (urllib.error.URLError, OSError):
            ready = False
        if ready:
            return
        time.sleep(0.5)
    errors = [line for line in server.log.read_text(errors="replace").splitlines() if line.startswith("E")] if server.log.exists() else []
    raise BadInput(f"tritonserver did not load {', '.join(models)}: {' | '.join(errors[-3:]) or 'see its log'}")
