"""maskrt's plugins for TensorRT >= 10: Python IPluginV3 plugins and their IPluginCreatorV3One creators.

The creators read a node's fields with `contracts.read_attributes` and the plugins check their inputs with
`contracts.check_inputs`, so a bad plugin node fails with the sentence it gets everywhere else, naming the node (the
ONNX parser names a plugin after its node). Kernels run through `launch`, on the stream TensorRT passes to enqueue.

Every method that TensorRT's Python plugin wrapper (python/src/infer/pyPlugin.cpp) calls without a default is
defined here, set_tactic included: a missing one fails there at run time with "no implementation provided for ...".
Whatever a method raises is recorded in `failures` before it propagates, since the wrapper only prints it to stderr;
the caller that asked TensorRT for the work raises it as its refusal.
Importing this module needs TensorRT; `maskrt.plugins.register()` imports it lazily.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import numpy as np
import tensorrt as trt

from maskrt.contracts.plugins import (
    BATCHED_NMS,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    ROI_ALIGN,
    BatchedNMSAttrs,
    MultilevelRoIAlignAttrs,
    PluginAttrs,
    check_inputs,
    read_attributes,
)
from maskrt.plugins import failures, launch
from maskrt.plugins.fields import field_arrays, field_dtypes

if not hasattr(trt, "IPluginV3"):
    raise ImportError(f"TensorRT >= 10 is needed for IPluginV3 plugins, found {getattr(trt, '__version__', 'none')}")

_FIELD_TYPES = {np.dtype(np.int32): trt.PluginFieldType.INT32, np.dtype(np.float32): trt.PluginFieldType.FLOAT32}

Method = TypeVar("Method", bound=Callable[..., Any])


def _recorded(method: Method) -> Method:
    """A method TensorRT calls: what it raises is recorded in `failures`, naming the node, then raised on to TensorRT.
    A contract error (ValueError from contracts) names the node already; anything else is prefixed with it."""

    @functools.wraps(method)
    def call(self: Any, *args: Any) -> Any:
        try:
            return method(self, *args)
        except Exception as error:
            text = str(error)
            if not (isinstance(error, ValueError) and " node '" in text):
                # A plugin knows its node; a creator is told it as create_plugin's first argument.
                node = getattr(self, "node_name", None) or (args[0] if args and isinstance(args[0], str) else "?")
                op_type = getattr(self, "op_type", None) or getattr(self, "name", "maskrt plugin")
                text = f"{op_type} node '{node}': {method.__name__}() failed: {type(error).__name__}: {text}"
            failures.record(text)
            raise

    return cast(Method, call)


class _Plugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
    """What both plugins share: identity, serialisation, input checks, cloning."""

    op_type = ""
    outputs = 0

    def __init__(self, node_name: str, attrs: PluginAttrs) -> None:
        trt.IPluginV3.__init__(self)
        trt.IPluginV3OneCore.__init__(self)
        trt.IPluginV3OneBuild.__init__(self)
        trt.IPluginV3OneRuntime.__init__(self)
        self.node_name = node_name
        self.attrs = attrs
        self.num_outputs = self.outputs
        self.plugin_name = self.op_type
        self.plugin_namespace = PLUGIN_NAMESPACE
        self.plugin_version = PLUGIN_VERSION
        # The timing cache tells plugins apart by their input shapes and this: the attributes, which change the work.
        self.timing_cache_id = ",".join(f"{name}={value.item()}" for name, value in field_arrays(attrs).items())
        self.input_dtypes: list[str] | None = None  # known once get_output_data_types ran
        self.serialized_data: dict[str, np.ndarray] = {}
        self.serialized: trt.PluginFieldCollection | None = None

    @_recorded
    def get_capability_interface(self, type: trt.PluginCapabilityType) -> Any:
        return self

    @_recorded
    def clone(self) -> trt.IPluginV3:
        plugin = type(self)(self.node_name, self.attrs)
        plugin.input_dtypes = self.input_dtypes
        return plugin

    @_recorded
    def attach_to_context(self, resource_context: Any) -> trt.IPluginV3:
        return self.clone()

    @_recorded
    def set_tactic(self, tactic: int) -> None:
        """Each plugin has one implementation and advertises no custom tactics, so TensorRT passes 0 (the default)."""

    @_recorded
    def get_fields_to_serialize(self) -> trt.PluginFieldCollection_:
        self.serialized_data = field_arrays(self.attrs)
        self.serialized = _field_collection(self.serialized_data)
        # TensorRT's own Python plugins return the list type; its binding converts it (the stubs name the C++ one).
        return cast(trt.PluginFieldCollection_, self.serialized)

    @_recorded
    def get_output_data_types(self, input_types: list[trt.DataType]) -> list[trt.DataType]:
        self.input_dtypes = [_dtype_name(t) for t in input_types]
        return self.output_types(input_types)

    def output_types(self, input_types: list[trt.DataType]) -> list[trt.DataType]:
        raise NotImplementedError

    def check(self, shapes: Sequence[Sequence[int | None]], dtypes: Sequence[str] | None) -> None:
        """contracts.check_inputs; before TensorRT has told the dtypes, the ones the contract accepts stand in."""
        check_inputs(self.op_type, self.node_name, self.attrs, shapes, dtypes or ["float32"] * len(shapes))

    @_recorded
    def configure_plugin(self, inputs: list[trt.DynamicPluginTensorDesc], outputs: list[trt.DynamicPluginTensorDesc]) -> None:
        self.check([_dims(i.desc.dims) for i in inputs], [_dtype_name(i.desc.type) for i in inputs])

    @_recorded
    def on_shape_change(self, inputs: list[trt.PluginTensorDesc], outputs: list[trt.PluginTensorDesc]) -> None:
        launch.load_kernels()  # now rather than in enqueue, which may run under CUDA graph capture


class MultilevelRoIAlignPlugin(_Plugin):
    op_type = ROI_ALIGN
    outputs = 1
    attrs: MultilevelRoIAlignAttrs  # what read_attributes gives the creator for this op type

    def output_types(self, input_types: list[trt.DataType]) -> list[trt.DataType]:
        return [input_types[1] if len(input_types) > 1 else trt.DataType.FLOAT]

    @_recorded
    def get_output_shapes(
        self, inputs: list[trt.DimsExprs], shape_inputs: list[trt.DimsExprs], expr_builder: trt.IExprBuilder
    ) -> list[trt.DimsExprs]:
        self.check([_exprs(i) for i in inputs], self.input_dtypes)
        size = expr_builder.constant(self.attrs.output_size)
        return [trt.DimsExprs([inputs[0][0], inputs[0][1], inputs[1][1], size, size])]

    @_recorded
    def supports_format_combination(self, pos: int, in_out: list[trt.DynamicPluginTensorDesc], num_inputs: int) -> bool:
        desc = in_out[pos].desc
        if desc.format != trt.TensorFormat.LINEAR:
            return False
        if pos == 0:
            return desc.type == trt.DataType.FLOAT
        if pos == 1:
            return desc.type in (trt.DataType.FLOAT, trt.DataType.HALF)
        return desc.type == in_out[1].desc.type  # the other levels and the output: the dtype of P{min_level}

    @_recorded
    def enqueue(self, input_desc: list[trt.PluginTensorDesc], output_desc: list[trt.PluginTensorDesc], inputs: list[int],
                outputs: list[int], workspace: int, stream: int) -> None:  # fmt: skip
        batch, num_rois, _ = _shape(input_desc[0].dims)
        levels = [_shape(desc.dims) for desc in input_desc[1:]]
        launches = launch.roi_align_launches(
            self.attrs,
            inputs[0],
            inputs[1:],
            outputs[0],
            batch=batch,
            num_rois=num_rois,
            channels=levels[0][1],
            feature_sizes=[(dims[2], dims[3]) for dims in levels],
            half=input_desc[1].type == trt.DataType.HALF,
        )
        launch.run(launches, stream)


class BatchedNMSPlugin(_Plugin):
    op_type = BATCHED_NMS
    outputs = 5
    attrs: BatchedNMSAttrs  # likewise

    def output_types(self, input_types: list[trt.DataType]) -> list[trt.DataType]:
        int32, float32 = trt.DataType.INT32, trt.DataType.FLOAT
        return [int32, float32, float32, int32, int32]

    @_recorded
    def get_output_shapes(
        self, inputs: list[trt.DimsExprs], shape_inputs: list[trt.DimsExprs], expr_builder: trt.IExprBuilder
    ) -> list[trt.DimsExprs]:
        self.check([_exprs(i) for i in inputs], self.input_dtypes)
        batch = inputs[1][0]
        one, four, k = expr_builder.constant(1), expr_builder.constant(4), expr_builder.constant(self.attrs.max_output)
        return [
            trt.DimsExprs([batch, one]),
            trt.DimsExprs([batch, k, four]),
            trt.DimsExprs([batch, k]),
            trt.DimsExprs([batch, k]),
            trt.DimsExprs([batch, k]),
        ]

    @_recorded
    def supports_format_combination(self, pos: int, in_out: list[trt.DynamicPluginTensorDesc], num_inputs: int) -> bool:
        desc = in_out[pos].desc
        wanted = self.output_types([])[pos - num_inputs] if pos >= num_inputs else trt.DataType.FLOAT
        return desc.format == trt.TensorFormat.LINEAR and desc.type == wanted

    @_recorded
    def get_workspace_size(
        self, inputs: list[trt.DynamicPluginTensorDesc], outputs: list[trt.DynamicPluginTensorDesc]
    ) -> int:
        batch, num_boxes, num_classes = _dims(inputs[1].max)
        return launch.nms_workspace(self.attrs, int(batch or 0), int(num_boxes or 0), int(num_classes or 0)).size

    @_recorded
    def enqueue(self, input_desc: list[trt.PluginTensorDesc], output_desc: list[trt.PluginTensorDesc], inputs: list[int],
                outputs: list[int], workspace: int, stream: int) -> None:  # fmt: skip
        batch, num_boxes, num_classes = _shape(input_desc[1].dims)
        launches = launch.nms_launches(
            self.attrs,
            inputs[0],
            inputs[1],
            outputs,
            workspace,
            batch=batch,
            num_boxes=num_boxes,
            num_classes=num_classes,
            boxes_per_class=len(input_desc[0].dims) == 4,
        )
        launch.run(launches, stream)


_PLUGINS: dict[str, type[_Plugin]] = {ROI_ALIGN: MultilevelRoIAlignPlugin, BATCHED_NMS: BatchedNMSPlugin}


class PluginCreator(trt.IPluginCreatorV3One):
    """Creates one op's plugin from a node's fields (build) or from its serialised fields (runtime)."""

    def __init__(self, op_type: str) -> None:
        trt.IPluginCreatorV3One.__init__(self)
        self.name = op_type
        self.plugin_namespace = PLUGIN_NAMESPACE
        self.plugin_version = PLUGIN_VERSION
        # The ONNX parser hands the creator exactly the node attributes named here.
        self.declared_data = {name: np.array([], dtype) for name, dtype in field_dtypes(op_type).items()}
        self.declared = _field_collection(self.declared_data)
        self.field_names = cast(trt.PluginFieldCollection_, self.declared)

    @_recorded
    def create_plugin(self, name: str, field_collection: trt.PluginFieldCollection_, phase: Any) -> trt.IPluginV3:
        values = {field_collection[i].name: field_collection[i].data for i in range(len(field_collection))}
        return _PLUGINS[self.name](name, read_attributes(self.name, name, values))


_creators: list[PluginCreator] = []  # the registry does not keep Python creators alive


def register_creators() -> None:
    registry = trt.get_plugin_registry()
    for op_type in _PLUGINS:
        if registry.get_creator(op_type, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
            creator = PluginCreator(op_type)
            if not registry.register_creator(creator, PLUGIN_NAMESPACE):
                raise RuntimeError(f"TensorRT refused to register the {PLUGIN_NAMESPACE}::{op_type} plugin creator")
            _creators.append(creator)


def _field_collection(arrays: dict[str, np.ndarray]) -> trt.PluginFieldCollection:
    """Plugin fields over `arrays`, which the caller keeps: the collection copies each field's pointer into its array,
    and the PluginField objects that own the arrays are gone once it is made."""
    return trt.PluginFieldCollection([trt.PluginField(name, data, _FIELD_TYPES[data.dtype]) for name, data in arrays.items()])


def _dims(dims: trt.Dims) -> tuple[int | None, ...]:
    """A tensor's dimensions, None where unknown (-1) until runtime."""
    return tuple(dim if dim >= 0 else None for dim in _shape(dims))


def _shape(dims: trt.Dims) -> tuple[int, ...]:
    """A tensor's dimensions when all are known (enqueue); tuple(dims) runs, but the stubs give Dims no __iter__."""
    return tuple(dims[i] for i in range(len(dims)))


def _exprs(dims: trt.DimsExprs) -> list[int | None]:
    return [dims[i].get_constant_value() if dims[i].is_constant() else None for i in range(len(dims))]


def _dtype_name(data_type: trt.DataType) -> str:
    names = {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16", trt.DataType.INT32: "int32"}
    return names.get(data_type, data_type.name.lower())
