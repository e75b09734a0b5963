"""maskrt's plugins meet a real TensorRT: the lean runtime of TensorRT 11.4 (tensorrt-lean-cu13), whose plugin registry,
creators, plugin fields and tensor descriptors work on a CPU (creating a Runtime needs a GPU).

The fields are made as TensorRT's ONNX parser makes them from a plugin node (onnx-tensorrt's loadFields): for each
field the creator declares that the node has as an attribute, an INT attribute becomes a one-element INT32 field, a
FLOAT one a one-element FLOAT32 field, a STRING one a NUL-terminated CHAR field; the creator is called with the node's
name in the build phase. The oracle is the deploy graph's plugin nodes as onnx reads them.
"""

from __future__ import annotations

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
