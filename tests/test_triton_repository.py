"""`maskrt triton` (maskrt.serve.triton_repository): every config of the repositories it writes parses with Triton's
own model_config schema (the protobuf that tritonclient ships) and is wired consistently; the Python-backend models
load in nvidia-pytriton's real tritonserver and answer like the Predictor: the ensemble's preprocess and postprocess
(with a Python stand-in for the ONNX Runtime member, whose backend that tritonserver lacks) and the Predictor model
of a plugin-mode graph; bad inputs are refused in one line and leave nothing behind."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskrt.cli.main import main as maskrt
from maskrt.runtime.predictor import Predictor
from maskrt.serve import protocol
from maskrt.serve.triton_repository import describe_model, local_tritonserver, write_triton_repository

from serve_support import assert_same_as_predictor, free_ports, png_bytes

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
http = pytest.importorskip("tritonclient.http")
grpc = pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pytriton")
from google.protobuf import text_format  # noqa: E402 - protobuf comes with tritonclient[grpc]

STAND_IN = '''"""A stand-in for the ONNX Runtime backend (not in nvidia-pytriton's tritonserver): the same inputs and outputs."""
from pathlib import Path

import triton_python_backend_utils as pb_utils

from maskrt.runtime.backends import OnnxRuntimeBackend


class TritonPythonModel:
    def initialize(self, args):
        self.backend = OnnxRuntimeBackend(Path(args["model_repository"]) / args["model_version"] / "model.onnx", device="cpu", threads=1)

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.backend.input_names}
            outputs = self.backend.run(feeds)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()]))
        return responses
'''


def parse_config(path: Path) -> object:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def parse_repository(repository: Path) -> dict[str, object]:
    configs = {folder.name: parse_config(folder / "config.pbtxt") for folder in sorted(repository.iterdir()) if folder.is_dir()}
    for name, config in configs.items():
        assert config.name == name
        assert (repository / name / "1").is_dir()
    return configs


def assert_ensemble_wired(configs: dict[str, object], name: str) -> None:
    """Every step's inputs come from the ensemble's inputs or an earlier step's outputs with the same type, every
    mapped tensor exists in the step's model, and the ensemble's outputs are produced."""
    ensemble = configs[name]
    assert ensemble.platform == "ensemble"
    available = {t.name: t.data_type for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        member = configs[step.model_name]
        member_inputs = {t.name: t.data_type for t in member.input}
        member_outputs = {t.name: t.data_type for t in member.output}
        for key, value in step.input_map.items():
            assert key in member_inputs and value in available, f"{step.model_name}: {key} <- {value}"
            assert available[value] == member_inputs[key], f"{step.model_name}: {key} type"
        for key, value in step.output_map.items():
            assert key in member_outputs, f"{step.model_name}: no output {key}"
            available[value] = member_outputs[key]
        required = {t.name for t in member.input if not t.optional}
        assert required <= set(step.input_map), f"{step.model_name}: {required - set(step.input_map)} not fed"
    assert {t.name for t in ensemble.output} <= set(available)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    folder = tmp_path_factory.mktemp("repository-images")
    assert maskrt(["shapes", "--count", "4", "--seed", "1", "-o", str(folder)]) == 0
    from runtime_support import shapes_frame

    val = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted((folder / "images").glob("*.png"))]
    return val + [shapes_frame(0, size=(150, 200)), shapes_frame(1, size=(200, 150))]


def test_every_config_parses_with_tritons_schema(shapes_demo_graph: Callable[..., Path], tmp_path: Path) -> None:
    native, plugins = shapes_demo_graph(2, "native"), shapes_demo_graph(2, "maskrt")
    # an engine's repository is written from its json: this one stands in for trt-convert's native FP16 engine
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"a TensorRT plan")
    record = json.loads({p.key: p.value for p in __import__("onnx").load(str(native), load_external_data=False).metadata_props}["maskrt.deploy"])
    built_for = {"tensorrt_version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "precision": "fp16"}
    (tmp_path / "model.engine.json").write_text(json.dumps({**record, **built_for}))

    configs = parse_repository(write_triton_repository(native, tmp_path / "onnx", instances=2))
    assert set(configs) == {"maskrt", "maskrt_preprocess", "maskrt_graph", "maskrt_postprocess"}
    assert configs["maskrt_graph"].platform == "onnxruntime_onnx" and configs["maskrt_preprocess"].backend == "python"
    graph = configs["maskrt_graph"]
    assert [(t.name, list(t.dims)) for t in graph.input] == [("images", [2, 3, 128, 128]), ("image_sizes", [2, 2])]
    assert [(t.name, list(t.dims)) for t in graph.output][1:3] == [("boxes", [2, 100, 4]), ("scores", [2, 100])]
    assert (tmp_path / "onnx" / "maskrt_graph" / "1" / "model.onnx").read_bytes() == native.read_bytes()
    assert_ensemble_wired(configs, "maskrt")

    configs = parse_repository(write_triton_repository(engine, tmp_path / "engine", model_name="shapes"))
    assert configs["shapes_graph"].platform == "tensorrt_plan" and configs["shapes_graph"].instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (tmp_path / "engine" / "shapes_graph" / "1" / "model.plan").read_bytes() == b"a TensorRT plan"
    assert_ensemble_wired(configs, "shapes")

    configs = parse_repository(write_triton_repository(plugins, tmp_path / "plugins", max_queue_delay_us=500))
    assert set(configs) == {"maskrt"}
    predictor = configs["maskrt"]
    assert predictor.backend == "python" and predictor.max_batch_size == 2
    assert predictor.dynamic_batching.max_queue_delay_microseconds == 500 and list(predictor.dynamic_batching.preferred_batch_size) == [2]
    assert {t.name for t in predictor.input} == {"image", "pixels"} and all(t.optional for t in predictor.input)


def test_the_python_models_load_in_tritonserver_and_answer_like_the_predictor(
    shapes_demo_graph: Callable[..., Path], images: list[np.ndarray], tmp_path: Path
) -> None:
    native, plugins = shapes_demo_graph(2, "native"), shapes_demo_graph(2, "maskrt")
    repository = write_triton_repository(native, tmp_path / "ensemble")
    # the ONNX Runtime member's stand-in: same config but for the backend, a Python model running the same graph
    config = repository / "maskrt_graph" / "config.pbtxt"
    config.write_text(config.read_text().replace('platform: "onnxruntime_onnx"', 'backend: "python"').replace("KIND_AUTO", "KIND_CPU"))
    (repository / "maskrt_graph" / "1" / "model.py").write_text(STAND_IN)
    expected = Predictor(native, threads=1)(images)
    assert isinstance(expected, list)
    encoded = [png_bytes(image) for image in images]
    with local_tritonserver(repository, ["maskrt"], *free_ports(3)) as server:
        for module, url in ((http, f"127.0.0.1:{server.http_port}"), (grpc, f"127.0.0.1:{server.grpc_port}")):
            client = module.InferenceServerClient(url)
            for start in range(0, len(images), 2):  # the graph's batch: 2 images a request
                result = client.infer("maskrt", protocol.client_inputs(module, encoded[start : start + 2]), outputs=protocol.client_outputs(module))
                for offset, found in enumerate(protocol.found_from_result(result)):
                    assert_same_as_predictor(found, expected[start + offset], f"ensemble {module.__name__} image {start + offset}")
            result = client.infer("maskrt", protocol.client_inputs(module, images[4][None]), outputs=protocol.client_outputs(module))
            assert_same_as_predictor(protocol.found_from_result(result)[0], expected[4], f"ensemble {module.__name__} pixels")
            with pytest.raises(Exception, match="not an image"):
                client.infer("maskrt", protocol.client_inputs(module, [b"not an image"]), outputs=protocol.client_outputs(module))
            with pytest.raises(Exception, match="batch holds 2"):
                client.infer("maskrt", protocol.client_inputs(module, encoded[:3]), outputs=protocol.client_outputs(module))

    repository = write_triton_repository(plugins, tmp_path / "predictor", threads=1)
    expected = Predictor(plugins, threads=1)(images)
    assert isinstance(expected, list)
    with local_tritonserver(repository, ["maskrt"], *free_ports(3)) as server:
        client = http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        for index, data in enumerate(encoded):
            result = client.infer("maskrt", protocol.client_inputs(http, [data]), outputs=protocol.client_outputs(http, full_masks=True))
            assert_same_as_predictor(protocol.found_from_result(result)[0], expected[index], f"predictor model image {index}")
        with pytest.raises(Exception, match="not an image"):
            client.infer("maskrt", protocol.client_inputs(http, [b"not an image"]))


def test_bad_inputs_are_refused_in_one_line_and_nothing_is_written(
    shapes_demo_graph: Callable[..., Path], shapes_demo_export: Path, tmp_path: Path
) -> None:
    native = shapes_demo_graph(2, "native")
    work = tmp_path / "work"
    work.mkdir()
    not_onnx = work / "notes.onnx"
    not_onnx.write_text("not a model")
    output = work / "repository"
    cases = [
        (dict(model=work / "missing.onnx"), "file not found"),
        (dict(model=not_onnx), "not a readable ONNX model"),
        (dict(model=shapes_demo_export), "not a maskrt deploy graph"),
        (dict(model=work / "model.engine"), "file not found"),
        (dict(model=native, instances=0), "--instances"),
        (dict(model=native, model_name="a/b"), "--model-name"),
    ]
    for arguments, says in cases:
        with pytest.raises(ValueError, match=says) as refused:
            write_triton_repository(output=output, **arguments)  # type: ignore[arg-type]
        assert "\n" not in str(refused.value)
        assert sorted(p.name for p in work.iterdir()) == ["notes.onnx"], arguments
    engine = work / "model.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(ValueError, match="model.engine.json"):
        write_triton_repository(engine, output)
    output.mkdir()
    (output / "keep").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        write_triton_repository(native, output)
    assert [p.name for p in output.iterdir()] == ["keep"]
    assert describe_model(native).info.batch == 2
    shutil.rmtree(output)


def test_the_command_line_arguments_map_onto_the_writer(shapes_demo_graph: Callable[..., Path], tmp_path: Path) -> None:
    argv = ["triton", str(shapes_demo_graph(2, "native")), "-o", str(tmp_path / "repo"), "--model-name", "shapes", "--instances", "2"]
    assert maskrt(argv) == 0
    configs = parse_repository(tmp_path / "repo")
    assert set(configs) == {"shapes", "shapes_preprocess", "shapes_graph", "shapes_postprocess"}
    assert configs["shapes_preprocess"].instance_group[0].count == 2
