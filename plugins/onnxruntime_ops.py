"""Run a deploy graph on a CPU with ONNX Runtime, its maskrt plugin nodes computed by the CPU reference.

Two ways. `cpu_session`: one InferenceSession (what the tests and INT8 calibration take), the plugins as custom ops.
`StagedSession`: the standard parts of the graph as sessions of their own, the plugin nodes run on the reference
between them, which is much faster: onnxruntime-extensions hands a custom op's output back to ONNX Runtime at about
a microsecond per value, most of a second for the pooled features of one image.

The plugins become Python custom ops of onnxruntime-extensions (domain ai.onnx.contrib). Such an op has a fixed list
of inputs and outputs, takes no float16 and never learns its node's name, so each plugin node is rewritten in memory
(the file on disk stays TensorRT's): op type `maskrt_MultilevelRoIAlign_<n>levels` for n feature maps or
`maskrt_BatchedNMS`, FP16 feature maps cast to float32 and the result cast back, and the node's attributes carried as
JSON beside its name. An exception raised inside a Python op aborts the whole process (the extension cannot hand it
back to ONNX Runtime), so every plugin node is checked against its contract, with the shapes and dtypes of ONNX shape
inference, before the session exists; the ops check again at run time, for dimensions that were symbolic.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Union

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.field_mask_pb2 import FieldMask
from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op

from maskrt.contracts import plugins as contracts
from maskrt.contracts.errors import BadInput
from maskrt.contracts.files import read_onnx
from maskrt.contracts.signals import deferred_interrupts
from maskrt.plugins import reference
from maskrt.plugins.split import split_at_plugins

CUSTOM_DOMAIN = "ai.onnx.contrib"
# The newest IR version ONNX Runtime 1.31 loads; onnx 1.23, and onnx-graphsurgeon with it, writes 14 by default.
MAX_IR_VERSION = 13
# Initializers up to this many elements keep their values for shape inference (shapes, axes, indices).
SMALL_CONSTANT = 1024
OUTPUT_NAMES = {
    contracts.ROI_ALIGN: ("pooled",),
    contracts.BATCHED_NMS: ("num", "boxes", "scores", "classes", "indices"),
}

ModelSource = Union[str, "os.PathLike[str]", onnx.ModelProto]
Shape = List[Union[int, str, None]]  # typing's List: evaluated at run time, and Python 3.8's list cannot be subscripted


def cpu_session(path_or_model: ModelSource) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for a deploy graph of either surgery mode (plugin nodes or standard ops only).

    Raises ValueError naming the node and the attribute or input when a plugin node breaks its contract.
    """
    mapped = custom_op_model(onnx_model(path_or_model))
    with deferred_interrupts():  # made by calling the custom ops' Python, which would turn Ctrl-C into a failure
        return _CustomOpSession(mapped.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])


class _CustomOpSession(ort.InferenceSession):  # type: ignore[misc]  # onnxruntime has no type stubs
    """An InferenceSession whose runs hold Ctrl-C and SIGTERM until they return: the custom ops are Python that
    ONNX Runtime calls back, where the KeyboardInterrupt would abort the whole process (contracts/signals.py)."""

    def run(self, *args: Any, **kwargs: Any) -> Any:
        with deferred_interrupts():
            return super().run(*args, **kwargs)


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Session options that can run the custom ops; `threads` intra-op threads (None: ONNX Runtime's default)."""
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


def custom_op_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model that ONNX Runtime can run: plugin nodes checked, then mapped to the custom ops."""
    plugin_nodes = check_plugin_nodes(model)
    mapped = onnx.ModelProto()
    mapped.CopyFrom(model)
    mapped.ir_version = min(mapped.ir_version, MAX_IR_VERSION)
    if not plugin_nodes:
        return mapped
    by_index = {plugin.index: plugin for plugin in plugin_nodes}
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(model.graph.node):
        nodes.extend(_custom_op_nodes(node, by_index[index]) if index in by_index else [node])
    del mapped.graph.node[:]
    mapped.graph.node.extend(nodes)
    opsets = [opset for opset in mapped.opset_import if opset.domain not in (contracts.ONNX_DOMAIN, CUSTOM_DOMAIN)]
    del mapped.opset_import[:]
    mapped.opset_import.extend([*opsets, onnx.helper.make_opsetid(CUSTOM_DOMAIN, 1)])
    return mapped


@dataclass(frozen=True)
class PluginNode:
    """A plugin node of a graph that passed its contract's checks."""

    index: int  # position in graph.node
    name: str
    attrs: contracts.PluginAttrs
    values: dict[str, Any]  # the node's attributes as plain Python values
    input_dtypes: tuple[str, ...]


def check_plugin_nodes(model: onnx.ModelProto) -> list[PluginNode]:
    """Every node in the plugins' domain, checked as TensorRT's creator checks it; ValueError on the first bad one.

    Input shapes and dtypes come from ONNX shape inference, run again with the outputs of the checked plugin nodes
    filled in (ONNX cannot infer them), so that a plugin fed by another plugin is checked too.
    """
    return _checked_plugin_nodes(model)[0]


def _checked_plugin_nodes(model: onnx.ModelProto) -> tuple[list[PluginNode], dict[str, tuple[Shape, str]]]:
    """check_plugin_nodes, and the shape and dtype of every value, the plugins' outputs included."""
    unchecked: list[tuple[int, str, contracts.PluginAttrs, dict[str, Any]]] = []
    for index, node in enumerate(model.graph.node):
        if node.domain == contracts.ONNX_DOMAIN:
            name = node.name or f"#{index}"
            values = _attribute_values(node)
            attrs = contracts.read_attributes(node.op_type, name, values)
            _check_plugin_identity(node.op_type, name, values)
            _check_output_count(node, name)
            unchecked.append((index, name, attrs, values))
    checked: list[PluginNode] = []
    skeleton = _without_weights(model)
    while True:
        types = _value_types(onnx.shape_inference.infer_shapes(skeleton).graph)
        if not unchecked:
            return sorted(checked, key=lambda plugin: plugin.index), types
        ready = [entry for entry in unchecked if all(value in types for value in model.graph.node[entry[0]].input)]
        if not ready:
            index, name, _, _ = unchecked[0]
            node = model.graph.node[index]
            unknown = next(value for value in node.input if value not in types)
            raise BadInput(
                f"{node.op_type} node '{name}': ONNX shape inference cannot tell the dtype and rank of input "
                f"'{unknown}', which TensorRT needs"
            )
        for entry in ready:
            index, name, attrs, values = entry
            node = model.graph.node[index]
            shapes = [types[value][0] for value in node.input]
            dtypes = [types[value][1] for value in node.input]
            contracts.check_inputs(node.op_type, name, attrs, shapes, dtypes)
            for output, (shape, dtype) in zip(node.output, _output_types(attrs, shapes, dtypes)):
                elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
                skeleton.graph.value_info.append(onnx.helper.make_tensor_value_info(output, elem_type, shape))
            checked.append(PluginNode(index, name, attrs, values, tuple(dtypes)))
            unchecked.remove(entry)


@dataclass(frozen=True)
class _Stage:
    """A run of standard nodes as one session, or one plugin node; and the values no later stage needs."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    session: ort.InferenceSession | None
    plugin: PluginNode | None
    done_with: tuple[str, ...]


class StagedSession:
    """A deploy graph of either plugin mode on ONNX Runtime, the plugin nodes run on the CPU reference between
    sessions for the standard nodes before, between and after them (checked as cpu_session checks them).

    `run(output_names, feeds)` as InferenceSession.run, for the graph's outputs and the values named in
    `extra_outputs`; `input_names` the graph's inputs; `plugin_nodes` how many plugin nodes run between sessions.
    """

    def __init__(
        self, model: onnx.ModelProto, options: ort.SessionOptions, providers: list[str], extra_outputs: Sequence[str] = ()
    ):
        plugins, types = _checked_plugin_nodes(model)
        unknown = [name for name in extra_outputs if name not in types]
        if unknown:
            raise BadInput(f"the graph has no value '{unknown[0]}' of a known type to output")
        if plugins:
            # The calling thread runs the plugins between the sessions: ONNX Runtime's idle threads must not spin.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.plugin_nodes = len(plugins)
        self.input_names = tuple(i.name for i in model.graph.input)
        self.input_types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
        by_index = {plugin.index: plugin for plugin in plugins}
        nodes = model.graph.node
        results = list(dict.fromkeys([*(o.name for o in model.graph.output), *extra_outputs]))
        initializers = {t.name: t for t in model.graph.initializer}
        opsets = [o for o in model.opset_import if o.domain not in (contracts.ONNX_DOMAIN, CUSTOM_DOMAIN)]
        self._stages: list[_Stage] = []
        self._outputs = results
        for run in split_at_plugins(model.graph, results):
            done_with = tuple(sorted(v for v in run.done_with if v not in initializers))
            if run.plugin:
                node = nodes[run.nodes[0]]
                self._stages.append(_Stage(tuple(node.input), tuple(node.output), None, by_index[run.nodes[0]], done_with))
                continue
            inputs, outputs = tuple(sorted(set(run.reads) - set(initializers))), tuple(sorted(run.hands_on))
            if not outputs:
                continue
            graph = onnx.helper.make_graph(
                [nodes[i] for i in run.nodes],
                f"{model.graph.name}/stage{len(self._stages)}",
                [_value_info(types, v) for v in inputs],
                [_value_info(types, v) for v in outputs],
                [initializers[v] for v in sorted(set(run.reads) & set(initializers))],
            )
            part = onnx.helper.make_model(graph, opset_imports=opsets)
            part.ir_version = min(model.ir_version, MAX_IR_VERSION)
            session = ort.InferenceSession(part.SerializeToString(), options, providers=providers)
            self._stages.append(_Stage(inputs, outputs, session, None, done_with))

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = list(output_names or self._outputs)
        values = dict(feeds)
        for stage in self._stages:
            if stage.session is not None:
                produced = stage.session.run(list(stage.outputs), {v: values[v] for v in stage.inputs})
            else:
                assert stage.plugin is not None
                produced = _run_plugin(stage.plugin, [values[v] for v in stage.inputs])
            values.update(zip(stage.outputs, produced))
            for value in stage.done_with:
                if value not in names:
                    values.pop(value, None)
        return [values[name] for name in names]


def _run_plugin(plugin: PluginNode, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """A plugin node on the CPU reference."""
    if isinstance(plugin.attrs, contracts.MultilevelRoIAlignAttrs):
        return [reference.multilevel_roi_align(inputs[0], inputs[1:], plugin.attrs)]
    return list(reference.batched_nms(inputs[0], inputs[1], plugin.attrs))


def _value_info(types: dict[str, tuple[Shape, str]], value: str) -> onnx.ValueInfoProto:
    """A stage's input or output with the dtype and shape that shape inference gives it. ONNX Runtime optimises a
    graph by what it knows of its shapes: with them a stage answers as its nodes do in a session of the whole graph,
    without them an INT8 graph's answers moved (0.05 mask AP on shapes-demo)."""
    if value not in types:
        raise BadInput(f"ONNX shape inference cannot tell the dtype of '{value}', which a stage of the graph passes on")
    shape, dtype = types[value]
    return onnx.helper.make_tensor_value_info(value, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)


# Every field of a model but its graph's initializers, which _without_weights leaves out rather than copy and delete.
_ALL_BUT_INITIALIZERS = FieldMask(
    paths=[
        *(field.name for field in onnx.ModelProto.DESCRIPTOR.fields if field.name != "graph"),
        *(f"graph.{field.name}" for field in onnx.GraphProto.DESCRIPTOR.fields if field.name != "initializer"),
    ]
)


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model for shape inference: large initializers become graph inputs of the same type and shape.

    Shape inference reads the values of small constants only (shapes, axes), and each pass serialises the model, so
    this spares it a few hundred megabytes of weights per pass.
    """
    skeleton = onnx.ModelProto()
    _ALL_BUT_INITIALIZERS.MergeMessage(model, skeleton)
    declared = {value.name for value in skeleton.graph.input}
    for initializer in model.graph.initializer:
        if np.prod(initializer.dims) <= SMALL_CONSTANT:
            skeleton.graph.initializer.append(initializer)
        elif initializer.name not in declared:
            skeleton.graph.input.append(
                onnx.helper.make_tensor_value_info(initializer.name, initializer.data_type, list(initializer.dims))
            )
    return skeleton


def onnx_model(path_or_model: ModelSource) -> onnx.ModelProto:
    """The model itself, or the ONNX file read (contracts.files.read_onnx)."""
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    return read_onnx(Path(path_or_model))


def _attribute_values(node: onnx.NodeProto) -> dict[str, Any]:
    """Attribute name → plain Python value (str for strings, lists for repeated fields and tensors)."""
    values: dict[str, Any] = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        elif isinstance(value, onnx.TensorProto):
            value = onnx.numpy_helper.to_array(value).tolist()
        elif isinstance(value, list):
            value = [item.decode(errors="replace") if isinstance(item, bytes) else item for item in value]
        values[attribute.name] = value
    return values


def _check_plugin_identity(op_type: str, name: str, values: dict[str, Any]) -> None:
    """TensorRT's ONNX parser looks a plugin up by op type, plugin_version and plugin_namespace (defaults "1", "")."""
    for attribute, default, expected in (
        ("plugin_version", "1", contracts.PLUGIN_VERSION),
        ("plugin_namespace", "", contracts.PLUGIN_NAMESPACE),
    ):
        value = values.get(attribute, default)
        if value != expected:
            raise BadInput(
                f"{op_type} node '{name}': attribute '{attribute}' = {value!r} (expected {expected!r}): TensorRT would "
                f"not find maskrt's plugin"
            )


def _check_output_count(node: onnx.NodeProto, name: str) -> None:
    expected = OUTPUT_NAMES[node.op_type]
    if len(node.output) != len(expected):
        raise BadInput(
            f"{node.op_type} node '{name}': expected {len(expected)} output(s) ({', '.join(expected)}), "
            f"got {len(node.output)}"
        )


def _value_types(graph: onnx.GraphProto) -> dict[str, tuple[Shape, str]]:
    """Shape and NumPy dtype name of every value whose dtype and rank are known."""
    types: dict[str, tuple[Shape, str]] = {}
    for initializer in graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(initializer.data_type).name
        types[initializer.name] = (list(initializer.dims), dtype)
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if not info.type.HasField("tensor_type") or not tensor.elem_type or not tensor.HasField("shape"):
            continue
        shape: Shape = [
            dim.dim_value if dim.HasField("dim_value") else dim.dim_param if dim.HasField("dim_param") else None
            for dim in tensor.shape.dim
        ]
        types[info.name] = (shape, onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name)
    return types


def _output_types(attrs: contracts.PluginAttrs, shapes: list[Shape], dtypes: list[str]) -> list[tuple[Shape, str]]:
    """The outputs' shapes and dtypes of a plugin node whose inputs passed the contract."""
    if isinstance(attrs, contracts.MultilevelRoIAlignAttrs):
        batch, rois = shapes[0][:2]
        size = attrs.output_size
        return [([batch, rois, shapes[1][1], size, size], dtypes[1])]
    batch, top = shapes[1][0], attrs.max_output
    return [
        ([batch, 1], "int32"),  # num
        ([batch, top, 4], "float32"),  # boxes
        ([batch, top], "float32"),  # scores
        ([batch, top], "int32"),  # classes
        ([batch, top], "int32"),  # indices
    ]


def _custom_op_nodes(node: onnx.NodeProto, plugin: PluginNode) -> list[onnx.NodeProto]:
    """The custom op standing in for a plugin node, with casts around it when the feature maps are FP16."""
    attributes = {"attributes": json.dumps(plugin.values, default=str), "node_name": plugin.name}

    def custom_op(op_type: str, inputs: list[str], outputs: list[str]) -> onnx.NodeProto:
        return onnx.helper.make_node(op_type, inputs, outputs, plugin.name, domain=CUSTOM_DOMAIN, **attributes)

    if node.op_type == contracts.BATCHED_NMS:
        return [custom_op(_BATCHED_NMS_OP, list(node.input), list(node.output))]
    op_type = _roi_align_op_type(len(node.input) - 1)
    if plugin.input_dtypes[1] != "float16":
        return [custom_op(op_type, list(node.input), list(node.output))]
    pooled = node.output[0]
    features = [f"{pooled}/input{i}/float32" for i in range(1, len(node.input))]
    casts = [
        onnx.helper.make_node("Cast", [fp16], [fp32], f"{plugin.name}/cast_input{i}", to=onnx.TensorProto.FLOAT)
        for i, (fp16, fp32) in enumerate(zip(node.input[1:], features), start=1)
    ]
    return [
        *casts,
        custom_op(op_type, [node.input[0], *features], [f"{pooled}/float32"]),
        onnx.helper.make_node(
            "Cast", [f"{pooled}/float32"], [pooled], f"{plugin.name}/cast_output", to=onnx.TensorProto.FLOAT16
        ),
    ]


def run_roi_align(rois: np.ndarray, *features: np.ndarray, attributes: str, node_name: str) -> np.ndarray:
    """The body of the MultilevelRoIAlign custom op: the node's JSON attributes checked, then the reference."""
    attrs = _checked_attributes(contracts.ROI_ALIGN, node_name, attributes, (rois, *features))
    assert isinstance(attrs, contracts.MultilevelRoIAlignAttrs)
    return reference.multilevel_roi_align(rois, features, attrs)


def run_batched_nms(
    boxes: np.ndarray, scores: np.ndarray, *, attributes: str, node_name: str
) -> tuple[np.ndarray, ...]:
    """The body of the BatchedNMS custom op: the node's JSON attributes checked, then the reference."""
    attrs = _checked_attributes(contracts.BATCHED_NMS, node_name, attributes, (boxes, scores))
    assert isinstance(attrs, contracts.BatchedNMSAttrs)
    return tuple(reference.batched_nms(boxes, scores, attrs))


def _checked_attributes(
    op_type: str, node_name: str, attributes: str, inputs: tuple[np.ndarray, ...]
) -> contracts.PluginAttrs:
    attrs = _node_attributes(op_type, node_name, attributes)
    contracts.check_inputs(
        op_type, node_name, attrs, [array.shape for array in inputs], [array.dtype.name for array in inputs]
    )
    return attrs


@functools.lru_cache(maxsize=256)
def _node_attributes(op_type: str, node_name: str, attributes: str) -> contracts.PluginAttrs:
    """A node's attributes, parsed on its first run rather than on every one (the dataclasses are frozen)."""
    return contracts.read_attributes(op_type, node_name, json.loads(attributes))


def _roi_align_op_type(num_feature_maps: int) -> str:
    return f"maskrt_{contracts.ROI_ALIGN}_{num_feature_maps}levels"


_BATCHED_NMS_OP = f"maskrt_{contracts.BATCHED_NMS}"


def _register_custom_ops() -> None:
    """Declare the ops to onnxruntime-extensions; sessions that register its library afterwards can run them."""
    attributes = {"attributes": PyCustomOpDef.dt_string, "node_name": PyCustomOpDef.dt_string}
    # An extension op declares its input count, so MultilevelRoIAlign is registered once per number of feature maps.
    for count in range(1, contracts.MAX_FEATURE_MAPS + 1):
        onnx_op(
            op_type=_roi_align_op_type(count),
            inputs=[PyCustomOpDef.dt_float] * (1 + count),
            outputs=[PyCustomOpDef.dt_float],
            attrs=attributes,
        )(run_roi_align)
    int32, float32 = PyCustomOpDef.dt_int32, PyCustomOpDef.dt_float
    onnx_op(
        op_type=_BATCHED_NMS_OP,
        inputs=[float32, float32],
        outputs=[int32, float32, float32, int32, int32],
        attrs=attributes,
    )(run_batched_nms)


_register_custom_ops()
