"""TensorRT for RTX (tensorrt-rtx-cu13) on a CPU: a real TensorRT builder and ONNX parser, with TensorRT 11's typing.

It builds engines without a GPU, but has no plugin layers and cannot build RoiAlign, NonMaxSuppression or NonZero,
so `trt-convert` builds, through maskrt's own build code, the dense part of shapes-demo's graphs (backbone+FPN, RPN
head, box and mask heads, cut out with onnx-graphsurgeon); its parser refuses what it cannot build, and creates maskrt's
plugins from real plugin nodes; its descriptors meet the plugins' format checks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
import pytest

pytest.importorskip("tensorrt_rtx_bindings.tensorrt_rtx")

from maskrt.runtime.backends import ModelInfo  # noqa: E402
from maskrt.contracts.records import read_engine_record  # noqa: E402

from tensorrt_support import RTX, dense_boundary, dense_part, run_maskrt, run_python  # noqa: E402

RTX_VERSION = __import__("tensorrt_rtx_bindings").__version__


@pytest.fixture(scope="module")
def dense_graphs(
    shapes_demo_deploy: Callable[[str], Path],
    shapes_demo_precision: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """The dense part of shapes-demo's FP32 deploy graph (plugin mode) and of its FP16 (AutoCast) and INT8 (Q/DQ)
    graphs that trt-convert --onnx-only made, each with its graph's metadata."""
    folder = tmp_path_factory.mktemp("dense")
    deploy = onnx.load(shapes_demo_deploy("maskrt"))
    boundary = dense_boundary(deploy)
    models = {"fp32": deploy, **{precision: onnx.load(path) for precision, path in shapes_demo_precision.items()}}
    graphs = {}
    for precision, model in models.items():
        graphs[precision] = folder / f"dense.{precision}.onnx"
        onnx.save(dense_part(model, boundary), graphs[precision])
    return graphs


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_trt_convert_builds_the_dense_part_with_tensorrt_for_rtx(
    dense_graphs: dict[str, Path], precision: str, tmp_path: Path
) -> None:
    graph = dense_graphs[precision]
    engine = tmp_path / f"dense.{precision}.engine"
    result = run_maskrt(RTX, ["convert", str(graph), "--precision", precision, "-o", str(engine)], tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    record = json.loads(engine.with_name(engine.name + ".json").read_text())
    assert record["precision"] == precision and record["tensorrt_version"] == RTX_VERSION
    assert record["onnx_sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest()
    assert (record["plugins"], record["batch"], record["input_size"], record["num_classes"]) == ("maskrt", 1, [128, 128], 4)
    assert engine.stat().st_size == record["engine_bytes"] > 1_000_000  # the weights alone are 24 MB in FP32
    # No GPU driver: the GPU's name is missing from the json, and the engine is kept.
    assert record["gpu"] is None and "could not read the GPU's name" in result.stderr
    assert "building: Building engine done in" in result.stderr  # TensorRT's progress monitor, as log lines
    assert (tmp_path / "cache" / "maskrt" / "tensorrt" / f"timing-{RTX_VERSION}-gpu.cache").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", engine.name, engine.name + ".json"]
    # The runtime reads the record as trt-convert wrote it.
    read = read_engine_record(engine)
    assert read is not None
    info = ModelInfo.of(read.deploy, read.precision, read.deploy.single_input)
    assert (info.precision, info.input_size, info.class_names[1:]) == (precision, (128, 128), ("circle", "square", "triangle"))


def test_a_named_timing_cache_and_an_optimization_level(dense_graphs: dict[str, Path], tmp_path: Path) -> None:
    engine, timing = tmp_path / "dense.engine", tmp_path / "timing.cache"
    argv = ["convert", str(dense_graphs["fp32"]), "--precision", "fp32", "--opt-level", "1", "--timing-cache", str(timing)]
    result = run_maskrt(RTX, [*argv, "-o", str(engine)], tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert timing.is_file() and engine.is_file()


def test_a_dla_core_the_device_does_not_have_is_refused(dense_graphs: dict[str, Path], tmp_path: Path) -> None:
    engine = tmp_path / "dense.engine"
    argv = ["convert", str(dense_graphs["fp32"]), "--precision", "fp32", "--dla-core", "0", "-o", str(engine)]
    result = run_maskrt(RTX, argv, tmp_path / "cache")
    assert result.returncode == 2
    assert "--dla-core 0: this device has 0 DLA cores" in one_line(result.stderr)
    assert not engine.exists() and not engine.with_name(engine.name + ".json").exists()


def test_a_parser_refusal_names_the_node_and_says_why(shapes_demo_deploy: Callable[[str], Path], tmp_path: Path) -> None:
    """TensorRT for RTX has no ROIAlign_TRT plugin, which TensorRT's parser makes of ONNX RoiAlign."""
    deploy, engine = shapes_demo_deploy("native"), tmp_path / "model.engine"
    result = run_maskrt(RTX, ["convert", str(deploy), "--precision", "fp32", "-o", str(engine)], tmp_path / "cache")
    assert result.returncode == 2
    line = one_line(result.stderr)
    first = next(node for node in onnx.load(deploy, load_external_data=False).graph.node if node.op_type == "RoiAlign")
    assert f"{deploy}: TensorRT's ONNX parser refused node '{first.name}' (RoiAlign): " in line
    assert "ROIAlign plugin was not found in the plugin registry" in line
    assert not engine.exists()


def single_node_graph(model: onnx.ModelProto, node_name: str) -> onnx.ModelProto:
    """One node of `model` with its inputs as graph inputs (shapes as inferred)."""
    graph = gs.import_onnx(model)
    node = next(n for n in graph.nodes if n.name == node_name)
    for tensor in node.inputs:
        tensor.inputs.clear()
    graph.inputs, graph.outputs = list(node.inputs), list(node.outputs)
    graph.cleanup()
    single = gs.export_onnx(graph)
    single.ir_version = model.ir_version
    return single


CREATE_AND_EXIT = """
import json
from maskrt.plugins import register, tensorrt_plugins
register()
create = tensorrt_plugins.PluginCreator.create_plugin

def recording(self, name, fields, phase):
    plugin = create(self, name, fields, phase)
    passed = {fields[i].name: [str(fields[i].type), fields[i].data.tolist()] for i in range(len(fields))}
    print(json.dumps({"name": name, "phase": str(phase), "fields": passed, "attrs": vars(plugin.attrs)}), flush=True)
    os._exit(0)  # adding the plugin layer is what TensorRT for RTX cannot do

tensorrt_plugins.PluginCreator.create_plugin = recording
import tensorrt as trt
logger = trt.Logger(trt.Logger.ERROR)
builder = trt.Builder(logger)
network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
trt.OnnxParser(network, logger).parse_from_file(sys.argv[1])
"""


def test_tensorrts_onnx_parser_makes_each_plugin_from_its_node(
    shapes_demo_deploy: Callable[[str], Path], tmp_path: Path
) -> None:
    """TensorRT for RTX's ONNX parser finds maskrt's creators in the registry and calls them with the fields it makes
    of a plugin node's attributes, in the build phase, under the node's name."""
    deploy = onnx.load(shapes_demo_deploy("maskrt"))
    for node in (n for n in deploy.graph.node if n.domain == "trt.plugins"):
        path = tmp_path / "node.onnx"
        onnx.save(single_node_graph(deploy, node.name), path)
        result = run_python(RTX, f"sys.argv[1:] = [{str(path)!r}]\n" + CREATE_AND_EXIT, tmp_path / "cache")
        assert result.returncode == 0, result.stderr
        created = json.loads(result.stdout.strip().splitlines()[-1])
        assert (created["name"], created["phase"]) == (node.name, "TensorRTPhase.BUILD")
        expected = {}
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.INT:
                expected[attribute.name] = ["PluginFieldType.INT32", [attribute.i]]
            elif attribute.type == onnx.AttributeProto.FLOAT:
                expected[attribute.name] = ["PluginFieldType.FLOAT32", [pytest.approx(attribute.f, rel=1e-7)]]
        assert created["fields"] == expected
        assert created["attrs"] == {name: value[1][0] for name, value in expected.items()}


FORMATS = """
import json
import numpy as np
from maskrt.plugins import register
register()
import tensorrt as trt
registry = trt.get_plugin_registry()

def desc(data_type, tensor_format=trt.TensorFormat.LINEAR):
    d = trt.DynamicPluginTensorDesc()
    d.desc.type, d.desc.format = data_type, tensor_format
    return d

def plugin(op, fields):
    keep = [trt.PluginField(k, v, trt.PluginFieldType.INT32 if v.dtype == np.int32 else trt.PluginFieldType.FLOAT32) for k, v in fields.items()]
    collection = trt.PluginFieldCollection_(trt.PluginFieldCollection(keep))
    return registry.get_creator(op, "1", "maskrt").create_plugin("node", collection, trt.TensorRTPhase.BUILD), keep

F, H, I = trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.INT32
roi, _ = plugin("MultilevelRoIAlign", {"output_size": np.array([7], np.int32), "sampling_ratio": np.array([2], np.int32),
                                        "aligned": np.array([0], np.int32)})
nms, _ = plugin("BatchedNMS", {"iou_threshold": np.array([0.5], np.float32), "score_threshold": np.array([0.05], np.float32),
                               "max_output": np.array([100], np.int32)})
def roi_ok(types, fmt=trt.TensorFormat.LINEAR):
    io = [desc(t, fmt) for t in types]
    return [roi.supports_format_combination(pos, io, 5) for pos in range(len(io))]
def nms_ok(types):
    io = [desc(t) for t in types]
    return [nms.supports_format_combination(pos, io, 2) for pos in range(len(io))]
print(json.dumps({
    "roi_fp32": roi_ok([F, F, F, F, F, F]), "roi_fp16": roi_ok([F, H, H, H, H, H]),
    "roi_fp16_rois": roi_ok([H, H, H, H, H, H]), "roi_mixed": roi_ok([F, H, F, H, H, F]),
    "roi_chw32": roi_ok([F] * 6, trt.TensorFormat.CHW32),
    "nms": nms_ok([F, F, I, F, F, I, I]), "nms_wrong": nms_ok([H, F, F, F, F, F, F]),
}))
"""


def test_the_plugins_choose_formats_from_tensorrts_descriptors(tmp_path: Path) -> None:
    """supports_format_combination on TensorRT's DynamicPluginTensorDesc: linear layout only; RoIAlign takes FP32
    rois and FP32 or FP16 maps, and its output has the maps' type; NMS is FP32 in, int32/FP32 out (docs/design.md)."""
    result = run_python(RTX, FORMATS, tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert answers == {
        "roi_fp32": [True] * 6,
        "roi_fp16": [True] * 6,
        "roi_fp16_rois": [False] + [True] * 5,
        "roi_mixed": [True, True, False, True, True, False],
        "roi_chw32": [False] * 6,
        "nms": [True] * 7,
        "nms_wrong": [False, True, False, True, True, False, False],
    }


HELD = """
import json
import tensorrt as trt
from maskrt.convert.build import _layer_node, held_layers
model = onnx.load(sys.argv[1])
names = [node.name for node in model.graph.node]
fp32 = [name for name in names if name.startswith("/maskrt/") and not name.startswith("/maskrt/preprocess")]
logger = trt.Logger(trt.Logger.ERROR)
builder = trt.Builder(logger)
network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
assert trt.OnnxParser(network, logger).parse_from_file(sys.argv[1])
held = set(held_layers(network, fp32, names))
layers = [network.get_layer(i) for i in range(network.num_layers)]
print(json.dumps([[_layer_node(layer, set(names)), i in held] for i, layer in enumerate(layers)]))
"""


def test_the_layers_held_at_fp32_are_those_tensorrts_parser_made_for_the_rebuilt_middle(
    shapes_demo_deploy: Callable[[str], Path], tmp_path: Path
) -> None:
    """On a real parse (the native deploy graph up to its first RoiAlign: proposals, box decoding, NMS), each layer
    is traced to the node it was made for, and the layers of the rebuilt middle are the ones held at FP32."""
    deploy = onnx.load(shapes_demo_deploy("native"))
    graph = gs.import_onnx(deploy)
    first = next(node for node in graph.nodes if node.op == "RoiAlign")
    graph.outputs = [tensor for tensor in first.inputs if isinstance(tensor, gs.Variable)]
    graph.cleanup().toposort()
    proposals = gs.export_onnx(graph)
    proposals.ir_version = deploy.ir_version
    path = tmp_path / "proposals.onnx"
    onnx.save(proposals, path)
    result = run_python(RTX, f"import onnx\nsys.argv[1:] = [{str(path)!r}]\n" + HELD, tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    layers = json.loads(result.stdout.strip().splitlines()[-1])
    traced = {node for node, _ in layers if node is not None}
    makes_layers = {node.name for node in proposals.graph.node if node.op_type not in ("Constant", "Identity")}
    assert makes_layers <= traced, sorted(makes_layers - traced)[:5]
    rebuilt = {name for name in traced if name.startswith("/maskrt/") and not name.startswith("/maskrt/preprocess")}
    assert rebuilt and {node for node, held in layers if held and node is not None} == rebuilt
    assert not any(held for node, held in layers if node is not None and not node.startswith("/maskrt/"))


PROFILE = """
import json
import tensorrt as trt
added = []
add_profile = trt.IBuilderConfig.add_optimization_profile
build = trt.Builder.build_serialized_network

def adding(self, profile):
    added.append(profile)
    return add_profile(self, profile)

def building(self, network, config):
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    shapes = {name: [[list(shape) for shape in profile.get_shape(name)] for profile in added] for name in names}
    print("PROFILE " + json.dumps({"profiles": config.num_optimization_profiles, "shapes": shapes}), flush=True)
    return build(self, network, config)

trt.IBuilderConfig.add_optimization_profile = adding
trt.Builder.build_serialized_network = building
from maskrt.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_dense_part_of_a_dynamic_batch_graph_builds_with_its_optimization_profile(
    shapes_demo_graph: Callable[..., Path], tmp_path: Path
) -> None:
    """trt-convert --opt-batch 2 on the dense part of a --max-batch 5 graph: the builder gets one optimization
    profile, min 1, opt 2, max 5 images for every input whose first dimension is the batch (read back from
    TensorRT's own IOptimizationProfile and IBuilderConfig), and the engine's json carries the range."""
    deploy = onnx.load(shapes_demo_graph(1, "maskrt", "--max-batch", "5"))
    graph, engine = tmp_path / "dense.onnx", tmp_path / "dense.engine"
    onnx.save(dense_part(deploy, dense_boundary(deploy)), graph)
    argv = ["convert", str(graph), "--precision", "fp32", "--opt-batch", "2", "-o", str(engine)]
    result = run_python(RTX, f"sys.argv[1:] = {argv!r}\n" + PROFILE, tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    # maskrt's build prints Polygraphy's stdout on stderr, where the recorder's line goes too.
    built = json.loads(next(line for line in result.stderr.splitlines() if line.startswith("PROFILE "))[len("PROFILE "):])
    assert built["profiles"] == 1
    pooled = {name: shapes for name, shapes in built["shapes"].items() if name not in ("images", "image_sizes")}
    assert built["shapes"]["images"] == [[[1, 3, 128, 128], [2, 3, 128, 128], [5, 3, 128, 128]]]
    assert built["shapes"]["image_sizes"] == [[[1, 2], [2, 2], [5, 2]]]
    assert len(pooled) == 2 and all([low[0], opt[0], high[0]] == [1, 2, 5] for [[low, opt, high]] in pooled.values())
    assert "batch 1 to 5 tuned for 2" in result.stderr
    record = json.loads(engine.with_name(engine.name + ".json").read_text())
    assert (record["batch"], record["max_batch"], record["opt_batch"]) == (5, 5, 2)
    read = read_engine_record(engine)
    assert read is not None and read.deploy.batch_range() == (1, 2, 5)
