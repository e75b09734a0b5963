"""maskrt's plugins meet a real TensorRT: the lean runtime of TensorRT 11.4 (tensorrt-lean-cu13), whose plugin registry,
creators, plugin fields and tensor descriptors work on a CPU (creating a Runtime needs a GPU).

The fields are made as TensorRT's ONNX parser makes them from a plugin node (onnx-tensorrt's loadFields): for each
field the creator declares that the node has as an attribute, an INT attribute becomes a one-element INT32 field, a
FLOAT one a one-element FLOAT32 field, a STRING one a NUL-terminated CHAR field; the creator is called with the node's
name in the build phase. The oracle is the deploy graph's plugin nodes as onnx reads them.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import pytest

tensorrt_lean = pytest.importorskip("tensorrt_lean")

from maskrt.contracts.plugins import BATCHED_NMS, PLUGIN_NAMESPACE, PLUGIN_VERSION, ROI_ALIGN  # noqa: E402

_glue: list[ModuleType] = []  # the registry keeps raw pointers to the creators: their module must outlive the tests


@pytest.fixture(scope="module")
def trt() -> Iterator[ModuleType]:
    """tensorrt_lean as the `tensorrt` that maskrt's plugin glue imports, with maskrt's creators registered in it."""
    previous = {name: sys.modules.get(name) for name in ("tensorrt", "maskrt.plugins.tensorrt_plugins")}
    sys.modules["tensorrt"] = tensorrt_lean
    sys.modules.pop("maskrt.plugins.tensorrt_plugins", None)
    from maskrt.plugins import register

    register()
    _glue.append(sys.modules["maskrt.plugins.tensorrt_plugins"])
    yield tensorrt_lean
    for name, module in previous.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module


@pytest.fixture(scope="module")
def plugin_nodes(shapes_demo_deploy: Callable[[str], Path]) -> list[onnx.NodeProto]:
    """The four plugin nodes of shapes-demo's deploy graph: two BatchedNMS, two MultilevelRoIAlign."""
    model = onnx.load(shapes_demo_deploy("maskrt"), load_external_data=False)
    nodes = [node for node in model.graph.node if node.op_type in (ROI_ALIGN, BATCHED_NMS)]
    assert sorted(node.op_type for node in nodes) == [BATCHED_NMS, BATCHED_NMS, ROI_ALIGN, ROI_ALIGN]
    return nodes


def parser_fields(trt: ModuleType, node: onnx.NodeProto, creator: Any, strings: bool = False) -> tuple[Any, list[Any]]:
    """The PluginFieldCollection that TensorRT's ONNX parser passes for `node`; with `strings`, the node's STRING
    attributes (plugin_version, plugin_namespace) too, as a creator that declares them would get them. Returns the
    collection and the fields, which own the memory it points to."""
    declared = {creator.field_names[i].name for i in range(len(creator.field_names))}
    fields = []
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if attribute.type == onnx.AttributeProto.INT and attribute.name in declared:
            fields.append(trt.PluginField(attribute.name, np.array([value], np.int32), trt.PluginFieldType.INT32))
        elif attribute.type == onnx.AttributeProto.FLOAT and attribute.name in declared:
            fields.append(trt.PluginField(attribute.name, np.array([value], np.float32), trt.PluginFieldType.FLOAT32))
        elif attribute.type == onnx.AttributeProto.STRING and strings:
            data = np.frombuffer(value + b"\0", np.int8)
            fields.append(trt.PluginField(attribute.name, data, trt.PluginFieldType.CHAR))
    return trt.PluginFieldCollection_(trt.PluginFieldCollection(fields)), fields


def node_values(node: onnx.NodeProto) -> dict[str, float]:
    """The node's numeric attributes as TensorRT's INT32 and FLOAT32 fields carry them."""
    values = {}
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.INT:
            values[attribute.name] = float(np.int32(attribute.i))
        elif attribute.type == onnx.AttributeProto.FLOAT:
            values[attribute.name] = float(np.float32(attribute.f))
    return values


def attrs_values(plugin: Any) -> dict[str, float]:
    return {name: float(value) for name, value in vars(plugin.attrs).items()}


def creator_of(trt: ModuleType, op_type: str) -> Any:
    creator = trt.get_plugin_registry().get_creator(op_type, PLUGIN_VERSION, PLUGIN_NAMESPACE)
    assert creator is not None, f"{PLUGIN_NAMESPACE}::{op_type} is not in TensorRT's plugin registry"
    return creator


def test_the_registry_holds_both_creators_under_their_namespace_and_version(trt: ModuleType) -> None:
    registry = trt.get_plugin_registry()
    listed = {(c.name, c.plugin_version, c.plugin_namespace) for c in registry.all_creators}
    assert {(ROI_ALIGN, "1", "maskrt"), (BATCHED_NMS, "1", "maskrt")} <= listed
    from maskrt.plugins import register

    register()  # a second call registers nothing twice
    assert len([c for c in registry.all_creators if c.plugin_namespace == "maskrt"]) == 2


def test_every_numeric_attribute_of_a_plugin_node_is_a_declared_field_of_its_type(
    trt: ModuleType, plugin_nodes: list[onnx.NodeProto]
) -> None:
    """The parser hands a creator only the attributes it declares: an undeclared one would silently keep its
    default inside TensorRT."""
    types = {onnx.AttributeProto.INT: trt.PluginFieldType.INT32, onnx.AttributeProto.FLOAT: trt.PluginFieldType.FLOAT32}
    for node in plugin_nodes:
        names = creator_of(trt, node.op_type).field_names
        declared = {names[i].name: names[i].type for i in range(len(names))}
        numeric = {a.name: types[a.type] for a in node.attribute if a.type in types}
        assert numeric == declared, node.name


@pytest.mark.parametrize("strings", [False, True], ids=["declared fields", "with plugin_version and plugin_namespace"])
def test_each_plugin_node_makes_its_plugin_from_the_parsers_fields(
    trt: ModuleType, plugin_nodes: list[onnx.NodeProto], strings: bool
) -> None:
    for node in plugin_nodes:
        creator = creator_of(trt, node.op_type)
        collection, _ = parser_fields(trt, node, creator, strings)
        plugin = creator.create_plugin(node.name, collection, trt.TensorRTPhase.BUILD)
        assert plugin.node_name == node.name
        assert (plugin.plugin_name, plugin.plugin_namespace, plugin.plugin_version) == (node.op_type, "maskrt", "1")
        assert attrs_values(plugin) == node_values(node), node.name


def test_serialized_fields_make_the_same_plugin_in_the_runtime_phase(
    trt: ModuleType, plugin_nodes: list[onnx.NodeProto]
) -> None:
    for node in plugin_nodes:
        creator = creator_of(trt, node.op_type)
        collection, _ = parser_fields(trt, node, creator)
        built = creator.create_plugin(node.name, collection, trt.TensorRTPhase.BUILD)
        serialized = trt.PluginFieldCollection_(built.get_fields_to_serialize())
        assert {serialized[i].type for i in range(len(serialized))} <= {trt.PluginFieldType.INT32, trt.PluginFieldType.FLOAT32}
        assert all(serialized[i].size == 1 for i in range(len(serialized)))
        restored = creator.create_plugin(node.name, serialized, trt.TensorRTPhase.RUNTIME)
        assert attrs_values(restored) == attrs_values(built) == node_values(node)
        clone = restored.clone()
        assert type(clone) is type(restored) and attrs_values(clone) == attrs_values(restored)


def test_a_field_out_of_its_contract_is_refused_naming_the_node(trt: ModuleType, plugin_nodes: list[onnx.NodeProto]) -> None:
    node = next(node for node in plugin_nodes if node.op_type == BATCHED_NMS)
    creator = creator_of(trt, BATCHED_NMS)
    fields = [trt.PluginField("iou_threshold", np.array([1.5], np.float32), trt.PluginFieldType.FLOAT32)]
    with pytest.raises(ValueError, match=f"BatchedNMS node '{node.name}': attribute 'iou_threshold' = 1.5 is out of range"):
        creator.create_plugin(node.name, trt.PluginFieldCollection_(trt.PluginFieldCollection(fields)), trt.TensorRTPhase.BUILD)


def descriptor(trt: ModuleType, shape: tuple[int, ...], data_type: Any) -> Any:
    """A DynamicPluginTensorDesc as TensorRT fills it for a static shape."""
    desc = trt.DynamicPluginTensorDesc()
    desc.desc.dims = trt.Dims(shape)
    desc.desc.type = data_type
    desc.min = desc.opt = desc.max = trt.Dims(shape)
    return desc


def graph_shapes(model_path: Path) -> dict[str, tuple[int, ...]]:
    model = onnx.load(model_path, load_external_data=False)
    infos = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    return {info.name: tuple(d.dim_value for d in info.type.tensor_type.shape.dim) for info in infos}


def test_output_types_and_configuration_from_tensorrts_descriptors(
    trt: ModuleType, plugin_nodes: list[onnx.NodeProto], shapes_demo_deploy: Callable[[str], Path]
) -> None:
    shapes = graph_shapes(shapes_demo_deploy("maskrt"))
    float32, float16, int32 = trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.INT32
    for node in plugin_nodes:
        creator = creator_of(trt, node.op_type)
        collection, _fields = parser_fields(trt, node, creator)
        plugin = creator.create_plugin(node.name, collection, trt.TensorRTPhase.BUILD)
        inputs = [descriptor(trt, shapes[name], float32) for name in node.input]
        outputs = [descriptor(trt, shapes[name], float32) for name in node.output]
        if node.op_type == BATCHED_NMS:
            assert plugin.get_output_data_types([float32, float32]) == [int32, float32, float32, int32, int32]
            assert plugin.get_workspace_size(inputs, outputs) > 0
        else:
            assert plugin.get_output_data_types([float32] * len(node.input)) == [float32]
            assert plugin.get_output_data_types([float32] + [float16] * (len(node.input) - 1)) == [float16]
        plugin.configure_plugin(inputs, outputs)
        wrong = [descriptor(trt, (*shapes[node.input[0]][:-1], 5), float32), *inputs[1:]]
        with pytest.raises(ValueError, match=f"'{node.name}': input '(rois|boxes)' must end in a dimension of 4"):
            plugin.configure_plugin(wrong, outputs)


def test_the_lean_runtime_cannot_show_a_tensor_format(trt: ModuleType) -> None:
    """Why supports_format_combination meets TensorRT for RTX's descriptors instead (test_tensorrt_rtx.py): the lean
    bindings register no nvinfer1::TensorFormat, so PluginTensorDesc.format cannot be read on them."""
    with pytest.raises(TypeError, match="TensorFormat"):
        trt.DynamicPluginTensorDesc().desc.format  # noqa: B018


# What TensorRT's Python plugin wrapper (python/src/infer/pyPlugin.cpp in NVIDIA/TensorRT) does with each method of a
# Python IPluginV3 plugin, as it reads at release/10.0, 10.3, 10.13, 11.0 and 11.1 (the same there): these it looks up
# with utils::getOverride and, when the plugin lacks them, fails with "no implementation provided for <name>()" ...
REQUIRED = {
    "IPluginV3": {"get_capability_interface", "clone"},
    "IPluginV3OneCore": set(),
    "IPluginV3OneBuild": {"supports_format_combination", "get_output_data_types", "get_output_shapes", "configure_plugin"},
    "IPluginV3OneRuntime": {"enqueue", "set_tactic", "on_shape_change", "attach_to_context", "get_fields_to_serialize"},
    "IPluginCreatorV3One": {"create_plugin"},
}
# ... these it looks up with py::get_override and does without (no cleanup, no workspace, no custom tactics) ...
DEFAULTED = {"IPluginV3": {"destroy"}, "IPluginV3OneBuild": {"get_workspace_size", "get_valid_tactics"}}
# ... and these properties it reads, failing with "<name> not initialized" unless the plugin set them.
PROPERTIES = {
    "IPluginV3OneCore": {"plugin_name", "plugin_version", "plugin_namespace"},
    "IPluginV3OneBuild": {"num_outputs"},
    "IPluginCreatorV3One": {"name", "plugin_version", "plugin_namespace", "field_names"},
}
KEYWORDS = {"in", "out"}  # parameter names the bindings document that Python cannot spell; the wrapper passes by position


def binding_methods(cls: type) -> dict[str, list[str]]:
    """The methods a TensorRT binding class declares, each with its parameters after self, read from the signature
    line pybind11 puts first in its docstring: `name(self: T, a: A, b: B) -> R`."""
    methods = {}
    for name, member in vars(cls).items():
        if name.startswith("_") or isinstance(member, property) or not callable(member):
            continue
        signature = (member.__doc__ or "").strip().splitlines()[0]
        match = re.match(rf"{name}\((.*)\)\s*->", signature)
        assert match, f"{cls.__name__}.{name}: no signature line in its docstring: {signature!r}"
        methods[name] = [part.split(":")[0].strip() for part in _top_level_split(match.group(1))][1:]
    return methods


def _top_level_split(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[("
        depth -= char in "])"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current] if current.strip() else parts


@pytest.mark.parametrize("interface", sorted(REQUIRED))
def test_the_bindings_list_what_the_plugin_wrapper_calls(trt: ModuleType, interface: str) -> None:
    """TensorRT 11.4's own classes name exactly the methods pyPlugin.cpp calls, with or without a default, and the
    properties it reads: a method a later TensorRT adds shows up here before it fails inside an engine build."""
    cls = getattr(trt, interface)
    assert set(binding_methods(cls)) == REQUIRED[interface] | DEFAULTED.get(interface, set())
    assert {name for name, member in vars(cls).items() if isinstance(member, property)} >= PROPERTIES.get(interface, set())


@pytest.mark.parametrize("op_type", [ROI_ALIGN, BATCHED_NMS])
def test_both_plugins_implement_every_method_without_a_default_with_its_signature(trt: ModuleType, op_type: str) -> None:
    from maskrt.plugins.tensorrt_plugins import _PLUGINS, PluginCreator

    for interface, required in REQUIRED.items():
        owner = PluginCreator if interface == "IPluginCreatorV3One" else _PLUGINS[op_type]
        documented = binding_methods(getattr(trt, interface))
        for name in required:
            implemented = getattr(owner, name)
            assert inspect.isfunction(implemented), f"{owner.__name__}.{name} is TensorRT's binding, not maskrt's: missing"
            parameters = list(inspect.signature(implemented).parameters)[1:]
            assert len(parameters) == len(documented[name]), f"{owner.__name__}.{name}{tuple(parameters)}"
            for ours, theirs in zip(parameters, documented[name]):
                assert ours == theirs or theirs in KEYWORDS, f"{owner.__name__}.{name}: {ours} for {theirs}"


def test_every_property_the_wrapper_reads_is_set(trt: ModuleType, plugin_nodes: list[onnx.NodeProto]) -> None:
    for node in plugin_nodes:
        creator = creator_of(trt, node.op_type)
        for name in PROPERTIES["IPluginCreatorV3One"]:
            assert getattr(creator, name) is not None
        collection, _ = parser_fields(trt, node, creator)
        plugin = creator.create_plugin(node.name, collection, trt.TensorRTPhase.BUILD)
        assert (plugin.plugin_name, plugin.plugin_version, plugin.plugin_namespace) == (node.op_type, "1", "maskrt")
        assert plugin.num_outputs == len(node.output)
        assert plugin.timing_cache_id  # the attributes: two nodes of one op with other attributes are timed apart
        assert plugin.set_tactic(0) is None  # TensorRT's default tactic: the plugins advertise no others


def test_pyplugin_source_agrees_where_a_tensorrt_checkout_is_given(trt: ModuleType) -> None:
    """With MASKRT_TENSORRT_SOURCE pointing at a checkout of NVIDIA/TensorRT, its pyPlugin.cpp is read: a binding
    method fails without an implementation exactly when REQUIRED says so."""
    root = os.environ.get("MASKRT_TENSORRT_SOURCE")
    if not root:
        pytest.skip("MASKRT_TENSORRT_SOURCE (a NVIDIA/TensorRT checkout) not set")
    text = (Path(root) / "python" / "src" / "infer" / "pyPlugin.cpp").read_text()
    without_default = set(re.findall(r"no implementation provided for (\w+)\(\)", text))
    for interface in REQUIRED:
        for name in binding_methods(getattr(trt, interface)):
            assert (name in without_default) == (name in REQUIRED[interface]), f"{interface}.{name}"


def test_a_plugin_error_inside_tensorrt_is_kept_for_the_caller(trt: ModuleType, plugin_nodes: list[onnx.NodeProto]) -> None:
    """TensorRT's wrapper only prints what a plugin raises: maskrt.plugins.failures keeps it, naming the node, for the
    build or the runtime to raise as its one-line refusal."""
    from maskrt.plugins import failures

    node = next(node for node in plugin_nodes if node.op_type == BATCHED_NMS)
    creator = creator_of(trt, BATCHED_NMS)
    failures.clear()
    bad = [trt.PluginField("iou_threshold", np.array([1.5], np.float32), trt.PluginFieldType.FLOAT32)]
    with pytest.raises(ValueError):
        creator.create_plugin(node.name, trt.PluginFieldCollection_(trt.PluginFieldCollection(bad)), trt.TensorRTPhase.BUILD)
    assert failures.take() == f"BatchedNMS node '{node.name}': attribute 'iou_threshold' = 1.5 is out of range (expected between 0 and 1)"
    assert failures.take() is None  # taken once

    collection, _fields = parser_fields(trt, node, creator)
    plugin = creator.create_plugin(node.name, collection, trt.TensorRTPhase.BUILD)
    boxes = descriptor(trt, (1, 10, 5), trt.DataType.FLOAT)
    with pytest.raises(ValueError):
        plugin.configure_plugin([boxes, descriptor(trt, (1, 10, 3), trt.DataType.FLOAT)], [])
    assert failures.take() == f"BatchedNMS node '{node.name}': input 'boxes' must end in a dimension of 4, got [1, 10, 5]"


def test_a_cuda_failure_in_enqueue_or_on_shape_change_is_kept_naming_the_node(trt: ModuleType, plugin_nodes: list[onnx.NodeProto]) -> None:
    """Without NVIDIA's driver (here) loading the kernels fails: the failure names the node, the method and why."""
    from maskrt.plugins import failures

    node = next(node for node in plugin_nodes if node.op_type == ROI_ALIGN)
    creator = creator_of(trt, ROI_ALIGN)
    collection, _fields = parser_fields(trt, node, creator)
    plugin = creator.create_plugin(node.name, collection, trt.TensorRTPhase.RUNTIME)
    inputs = [trt.PluginTensorDesc() for _ in node.input]
    inputs[0].dims, inputs[0].type = trt.Dims((1, 8, 4)), trt.DataType.FLOAT
    for desc in inputs[1:]:
        desc.dims, desc.type = trt.Dims((1, 4, 16, 16)), trt.DataType.FLOAT
    failures.clear()
    with pytest.raises(RuntimeError):
        plugin.on_shape_change(inputs, [])
    with pytest.raises(RuntimeError):
        plugin.enqueue(inputs, [], [0] * len(inputs), [0], 0, 0)
    recorded = failures.take()
    assert recorded is not None and recorded.startswith(
        f"MultilevelRoIAlign node '{node.name}': on_shape_change() failed: CudaError: the NVIDIA driver library (libcuda) "
        "could not be loaded"
    )
