"""Precision passes: the FP32 deploy graph → a typed FP16 graph (ModelOpt AutoCast) or an explicit INT8 Q/DQ graph
(ModelOpt ONNX PTQ), with the rebuilt middle and the plugin nodes kept FP32 (docs/design.md, "Precision").

Both are ONNX graphs that every supported TensorRT builds and that ONNX Runtime runs on a CPU. ModelOpt's tools
take standard ONNX only (they would ask TensorRT to run a custom op), so the plugin nodes are cut out first: their
outputs become graph inputs and their inputs graph outputs, all FP32. For INT8 calibration the cut graph is fed what
the plugins computed in the FP32 graph on the same images, so ModelOpt calibrates exactly the activations that the
whole graph has, in either plugin mode.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import logging
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console

from maskrt.contracts.errors import BadInput
from maskrt.contracts.plugins import ONNX_DOMAIN
from maskrt.contracts.precisions import CALIBRATION_METHODS
from maskrt.contracts.records import (
    PRECISION_KEY,
    REBUILT_PREFIX,
    PrecisionRecord,
    read_precision_record,
    write_precision_record,
)
from maskrt.plugins.split import split_at_plugins
from maskrt.runtime.progress import track

# INT8 quantizes the inputs of these ops in the backbone, FPN and heads, less the heads' predictors
# (_quantized_layers). ConvTranspose (the mask head's upsampling) stays: quantized, it cost shapes-demo 0.1 mask AP.
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
# --calib-method percentile: each activation saturates at this percentile of |x| over the calibration images.
PERCENTILE = 99.99
PERCENTILE_BINS = 4096


def fp32_node_names(model: onnx.ModelProto) -> list[str]:
    """Nodes that must stay FP32 on every TensorRT: the rebuilt middle and the plugin nodes.

    The middle is everything surgery built between the reused parts: input normalisation, anchors and box decoding,
    clipping, NMS inputs, RoIAlign box coordinates, the score Softmax/Sigmoid and the mask Sigmoid. Box coordinates
    are input pixels, and at 1344 px FP16's step is a whole pixel.
    """
    return [node.name for node in model.graph.node if node.name.startswith(f"{REBUILT_PREFIX}/") or node.domain == ONNX_DOMAIN]


def autocast_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The typed FP16 graph: ModelOpt AutoCast with fp32_node_names kept FP32 and the inputs and outputs as they were.

    The form TensorRT 11 (strongly typed only) needs, and one that every older TensorRT builds as it is typed. Of an
    INT8 graph it makes the INT8 graph with FP16 where it was FP32 (opset 19, for FP16 Q/DQ scales: TensorRT >= 10).
    """
    from modelopt.onnx.autocast import convert_to_mixed_precision

    keep = fp32_node_names(model)
    dense, cut = _cut_plugins(model)
    with _scratch("maskrt-fp16-") as folder, _quiet_modelopt():
        path = folder / "dense.onnx"
        onnx.save(dense, path)
        converted = convert_to_mixed_precision(
            str(path),
            low_precision_type="fp16",
            nodes_to_exclude=[f"^{re.escape(name)}$" for name in keep],
            # What stays FP32 follows from the graph's structure, not from the value ranges of one calibration run.
            data_max=np.inf,
            keep_io_types=True,
            providers=["cpu"],
        )
    record = read_precision_record(model) or PrecisionRecord(precision="fp16", float="fp16")
    return _with_metadata(_put_plugins_back(converted, cut, model), model, replace(record, float="fp16"))


def quantize_int8(
    model: onnx.ModelProto, calibration: list[dict[str, np.ndarray]], method: str = "entropy", console: Console | None = None
) -> onnx.ModelProto:
    """The explicit INT8 graph: the FP32 deploy graph with the Q/DQ pairs of ModelOpt's ONNX PTQ, calibrated on
    `calibration` (batches at the graph's batch size, as calib's feeds makes them), before the inputs of the
    backbone's, FPN's and heads' convolutions and matrix products.

    Nothing else changes. The heads' predictors stay unquantized; the rest stays FP32, for a TensorRT <= 10 build to
    lower it to FP16 where the FP32 layer constraints allow (autocast_fp16 of this graph types it FP16, for TensorRT
    11); the rebuilt middle and the plugin nodes read unquantized values. ModelOpt writes opset 19 and IR 10, which
    TensorRT 8.5 and 8.6 do not parse, so the Q/DQ pairs it placed (QuantizeLinear and DequantizeLinear with FP32
    per-channel scales exist since opset 13) are moved into the deploy graph as it was, at its own opset.
    """
    from modelopt.onnx.quantization import quantize

    if method not in CALIBRATION_METHODS:
        raise BadInput(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    batches = _checked_calibration(model, calibration)
    dense, cut = _cut_plugins(model)
    keep = set(fp32_node_names(model))
    layers = _quantized_layers(dense, keep)
    images = sum(len(batch[model.graph.input[0].name]) for batch in batches)
    started = time.perf_counter()
    if console is not None:
        console.print(f"INT8 calibration ({method}) of {len(layers)} layers on {images} images ...")
    with _scratch("maskrt-int8-") as folder, _quiet_modelopt(console):
        reader = _CalibrationReader(model, cut, batches, console)
        source, output = folder / "dense.onnx", folder / "dense.int8.onnx"
        onnx.save(dense, source)
        quantize(
            str(source),
            calibration_data_reader=reader,
            # Percentile narrows max calibration's scales afterwards: ModelOpt calibrates by entropy or max only.
            calibration_method="entropy" if method == "entropy" else "max",
            calibration_eps=["cpu"],
            # The graph's static shapes, so that ModelOpt reads the Gemms' sizes from shape inference, not from a run.
            calibration_shapes=_shapes_spec(dense, len(batches[0][model.graph.input[0].name])),
            nodes_to_quantize=[f"^{re.escape(name)}$" for name in layers],
            high_precision_dtype="fp32",
            output_path=str(output),
            log_level="ERROR",
        )
        quantized = onnx.load(output)
    if method == "percentile":
        reader.rewind("percentile")
        _narrow_to_percentile(quantized, dense, reader)
    int8 = _with_qdq_of(quantized, model, keep)
    if console is not None:
        console.print(f"INT8 graph: {len(layers)} layers quantized in {time.perf_counter() - started:.1f} s")
    record = PrecisionRecord(precision="int8", float="fp32", calibration_method=method, calibration_images=images)
    return _with_metadata(int8, model, record)


def fp16_rounding_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """An FP32 graph that computes what an FP16 graph says, for ONNX Runtime on a CPU.

    ONNX Runtime's CPU provider has FP16 kernels for few ops (on x86 none for the math of a Mask R-CNN: Conv,
    ConvTranspose, Gemm, MatMul, Relu, Add, Mul, MaxPool, Sigmoid, Softmax). It runs each FP16 region that it cannot
    compute as one FP32 region between two casts, so values inside the region are never rounded to FP16 and the
    answer is better than any FP16 engine's. Here every op computes in FP32 and each value that the graph types FP16
    is rounded to FP16 where it is made (a Cast to FP16 and back, which ONNX Runtime keeps), as a TensorRT FP16
    kernel stores its output: weights, inputs and every intermediate tensor carry exactly FP16's values.
    """
    half, single = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    rounded = onnx.ModelProto()
    rounded.CopyFrom(model)
    graph = rounded.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {value.name: value.type.tensor_type.elem_type for value in inferred.value_info}
    types.update({value.name: value.type.tensor_type.elem_type for value in [*graph.value_info, *graph.input, *graph.output]})
    for tensor in [*graph.initializer, *(a.t for node in graph.node for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)]:
        if tensor.data_type == half:
            tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor).astype(np.float32), tensor.name))
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == half:
                attribute.i = single
        nodes.append(node)
        for index, name in enumerate(node.output):
            if types.get(name) == half:
                exact = f"{name}/fp32"
                node.output[index] = exact
                nodes.append(onnx.helper.make_node("Cast", [exact], [f"{name}/fp16"], f"{name}/to_fp16", to=half))
                nodes.append(onnx.helper.make_node("Cast", [f"{name}/fp16"], [name], f"{name}/from_fp16", to=single))
    del graph.node[:]
    graph.node.extend(nodes)
    for value in [*graph.value_info, *graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == half:
            value.type.tensor_type.elem_type = single
    return rounded


def _quantized_layers(model: onnx.ModelProto, keep: set[str]) -> list[str]:
    """The QUANTIZED_OPS nodes outside `keep`, less the heads' predictors: the layers whose outputs only `keep` nodes
    read (RPN objectness and box deltas, class logits and box regression, mask logits). Quantized, they put INT8's
    step straight into the scores, box deltas and mask logits; on shapes-demo that cost 0.5 mask AP."""
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.name)
    return [
        node.name
        for node in model.graph.node
        if node.op_type in QUANTIZED_OPS
        and node.name not in keep
        and not all(readers.get(name, set()) <= keep for name in node.output)
    ]


def _shapes_spec(model: onnx.ModelProto, batch: int) -> str:
    """The inputs' shapes as ModelOpt's shape specs: "images:1x3x800x1344,...", a symbolic batch at `batch`."""
    dims = {
        value.name: [str(dim.dim_value) if dim.HasField("dim_value") else str(batch) for dim in value.type.tensor_type.shape.dim]
        for value in model.graph.input
    }
    return ",".join(f"{name}:{'x'.join(shape)}" for name, shape in dims.items())


def _checked_calibration(model: onnx.ModelProto, calibration: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The batches, each with exactly the graph's inputs at their shapes and dtypes; a symbolic batch (a
    dynamic-batch graph) takes any."""
    if not calibration:
        raise BadInput("INT8 calibration needs at least one batch of images")
    expected = {
        value.name: (
            tuple(dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in value.type.tensor_type.shape.dim),
            onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type),
        )
        for value in model.graph.input
    }
    batches = []
    for index, batch in enumerate(calibration):
        for name, (shape, dtype) in expected.items():
            array = batch.get(name)
            fits = array is not None and len(array.shape) == len(shape)
            fits = fits and all(isinstance(want, str) or want == got for want, got in zip(shape, array.shape))
            if array is None or not fits or array.dtype != dtype:
                got = "nothing" if array is None else f"{array.dtype} {list(array.shape)}"
                raise BadInput(
                    f"calibration batch {index}: the graph's input {name} is {dtype} {list(shape)}, got {got}"
                )
        batches.append({name: batch[name] for name in expected})
    return batches


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader over the calibration batches, for the graph without its plugin nodes:
    each batch carries the graph's inputs and, computed by the FP32 graph on the same batch, the plugin outputs."""

    def __init__(
        self,
        model: onnx.ModelProto,
        cut: _PluginCut,
        calibration: list[dict[str, np.ndarray]],
        console: Console | None,
    ):
        self._calibration = calibration
        self._console = console
        self._session = None
        if cut.inputs:
            from maskrt.plugins import cpu_session

            with_outputs = onnx.ModelProto()
            with_outputs.CopyFrom(model)
            with_outputs.graph.output.extend(_value_types(model, cut.inputs))
            self._session = cpu_session(with_outputs)
        self._plugin_outputs = list(cut.inputs)
        self.rewind()

    def _batches(self, description: str) -> Iterator[dict[str, np.ndarray]]:
        for feeds in track(self._calibration, description, self._console, unit="batches"):
            yield {**feeds, **self._plugin_values(feeds)}

    def _plugin_values(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            return {}
        return dict(zip(self._plugin_outputs, self._session.run(self._plugin_outputs, feeds)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iterator, None)

    def get_first(self) -> dict[str, np.ndarray]:
        return {**self._calibration[0], **self._plugin_values(self._calibration[0])}

    def rewind(self, description: str = "calibration") -> None:
        """Back to the first batch; the percentile pass rewinds it once more, under its own progress line."""
        self._iterator = self._batches(description)


def _with_qdq_of(quantized: onnx.ModelProto, model: onnx.ModelProto, keep: set[str]) -> onnx.ModelProto:
    """`model` with the Q/DQ pairs of `quantized` (ModelOpt's output, the same nodes by name): one pair per tensor,
    placed before the first node that reads it, and read by the nodes that read it in `quantized` except those in
    `keep`. ONNX Runtime's quantizer moves every reader of a quantized tensor behind its pair (so that TensorRT may
    keep the FPN's Resize and Add in INT8 too), which would have RoIAlign pool quantized features."""
    initializers = {initializer.name: initializer for initializer in quantized.graph.initializer}
    producer = {name: node for node in quantized.graph.node for name in node.output}
    result = onnx.ModelProto()
    result.CopyFrom(model)
    position = {node.name: index for index, node in enumerate(result.graph.node)}
    taken = {initializer.name for initializer in result.graph.initializer}
    # tensor → (first reader, Q and DQ). ModelOpt gives each activation one pair; a weight that several nodes share
    # (the RPN head's, once per FPN level) it copies per node, with the same scales.
    pairs: dict[str, tuple[int, list[onnx.NodeProto], np.ndarray]] = {}
    for node in quantized.graph.node:
        if node.name in keep or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        target = result.graph.node[position[node.name]]
        for index, name in enumerate(node.input):
            dequantize = producer.get(name)
            if dequantize is None or dequantize.op_type != "DequantizeLinear":
                continue
            quantize = producer[dequantize.input[0]]
            tensor = target.input[index]
            scale_values = onnx.numpy_helper.to_array(initializers[quantize.input[1]])
            if tensor not in pairs:
                scale, zero_point = (_copied(initializers[parameter], taken, result.graph) for parameter in quantize.input[1:3])
                axis = [attribute for attribute in quantize.attribute if attribute.name == "axis"]
                pair = [
                    onnx.helper.make_node("QuantizeLinear", [tensor, scale, zero_point], [f"{tensor}/int8"], f"{tensor}/quantize"),
                    onnx.helper.make_node(
                        "DequantizeLinear", [f"{tensor}/int8", scale, zero_point], [f"{tensor}/dequantized"], f"{tensor}/dequantize"
                    ),
                ]
                for pair_node in pair:
                    pair_node.attribute.extend(axis)
                pairs[tensor] = (position[node.name], pair, scale_values)
            first, pair, first_scale = pairs[tensor]
            if not np.array_equal(scale_values, first_scale):
                raise RuntimeError(f"ModelOpt quantized {tensor} with two different scales")
            pairs[tensor] = (min(first, position[node.name]), pair, first_scale)
            target.input[index] = pair[1].output[0]
    before: dict[int, list[onnx.NodeProto]] = {}
    for first, pair, _ in pairs.values():
        before.setdefault(first, []).extend(pair)
    ordered = [new for index, node in enumerate(result.graph.node) for new in [*before.get(index, []), node]]
    del result.graph.node[:]
    result.graph.node.extend(ordered)
    return result


def _copied(initializer: onnx.TensorProto, taken: set[str], graph: onnx.GraphProto) -> str:
    """Adds a copy of `initializer` to `graph` under a name not yet taken; returns the name."""
    name, suffix = initializer.name, 1
    while name in taken:
        name, suffix = f"{initializer.name}_{suffix}", suffix + 1
    taken.add(name)
    copy = graph.initializer.add()
    copy.CopyFrom(initializer)
    copy.name = name
    return name


def _narrow_to_percentile(quantized: onnx.ModelProto, dense: onnx.ModelProto, reader: _CalibrationReader) -> None:
    """Narrows each activation scale of a max-calibrated graph to the PERCENTILE-th percentile of |x| over the
    calibration batches, so that rare outliers saturate instead of coarsening every other value's step: a histogram
    of |x| per tensor on [0, max], which the max scale bounds, in one more pass of the FP32 graph."""
    import onnxruntime

    initializers = {initializer.name: initializer for initializer in quantized.graph.initializer}
    scales: dict[str, str] = {}  # activation tensor → its scale initializer
    for node in quantized.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers:
            scales[node.input[0]] = node.input[1]
    inputs = {value.name for value in dense.graph.input}
    probed = [name for name in scales if name not in inputs]
    probe = onnx.ModelProto()
    probe.CopyFrom(dense)
    probe.graph.output.extend(_value_types(dense, probed))
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    tops = {name: float(onnx.numpy_helper.to_array(initializers[scale])) * 128 for name, scale in scales.items()}
    histograms = {name: np.zeros(PERCENTILE_BINS, np.int64) for name in scales}
    maxima = dict.fromkeys(scales, 0.0)
    while (feeds := reader.get_next()) is not None:
        values = dict(zip(probed, session.run(probed, feeds)))
        for name in scales:
            magnitudes = np.abs(values[name] if name in values else feeds[name])
            maxima[name] = max(maxima[name], float(magnitudes.max()))
            histograms[name] += np.histogram(magnitudes, PERCENTILE_BINS, (0.0, tops[name]))[0]
    for name, scale in scales.items():
        if maxima[name] == 0:
            continue
        cumulative = np.cumsum(histograms[name])
        bin_index = int(np.searchsorted(cumulative, cumulative[-1] * PERCENTILE / 100))
        percentile = min(tops[name] * (bin_index + 1) / PERCENTILE_BINS, maxima[name])
        old = onnx.numpy_helper.to_array(initializers[scale])
        narrowed = (old * (percentile / maxima[name])).astype(old.dtype)
        initializers[scale].CopyFrom(onnx.numpy_helper.from_array(narrowed, scale))


@dataclass(frozen=True)
class _PluginCut:
    """The plugin nodes taken out of a graph, and the tensors where the rest of the graph meets them."""

    plugins: tuple[onnx.NodeProto, ...]
    inputs: tuple[str, ...]  # plugin outputs that the rest reads: graph inputs of the dense part
    outputs: tuple[str, ...]  # tensors of the rest that plugins read: graph outputs of the dense part


def _cut_plugins(model: onnx.ModelProto) -> tuple[onnx.ModelProto, _PluginCut]:
    """The graph without its plugin nodes (a standard ONNX graph), and what was cut."""
    graph = model.graph
    runs = split_at_plugins(graph)
    plugin_runs = [run for run in runs if run.plugin]
    plugins = [graph.node[run.nodes[0]] for run in plugin_runs]
    dense_nodes = [graph.node[index] for run in runs if not run.plugin for index in run.nodes]
    from_plugins = {name for node in plugins for name in node.output}
    read_by_dense = {name for run in runs if not run.plugin for name in run.reads}
    from_dense = {name for run in runs if not run.plugin for name in run.hands_on}
    cut = _PluginCut(
        plugins=tuple(plugins),
        inputs=tuple(dict.fromkeys(name for run in plugin_runs for name in run.hands_on if name in read_by_dense)),
        outputs=tuple(dict.fromkeys(name for run in plugin_runs for name in run.reads if name in from_dense)),
    )
    dense = onnx.ModelProto()
    dense.CopyFrom(model)
    del dense.graph.node[:]
    dense.graph.node.extend(dense_nodes)
    dense.graph.input.extend(_value_types(model, cut.inputs))
    kept_outputs = [output for output in graph.output if output.name not in from_plugins]
    kept = {output.name for output in kept_outputs}
    extra_outputs = _value_types(model, [name for name in cut.outputs if name not in kept])
    del dense.graph.output[:]
    dense.graph.output.extend([*kept_outputs, *extra_outputs])
    opsets = [opset for opset in dense.opset_import if opset.domain != ONNX_DOMAIN]
    del dense.opset_import[:]
    dense.opset_import.extend(opsets)
    return dense, cut


def _put_plugins_back(dense: onnx.ModelProto, cut: _PluginCut, original: onnx.ModelProto) -> onnx.ModelProto:
    """The converted dense part with the plugin nodes where they were, and the original graph's inputs and outputs."""
    if not cut.plugins:
        return dense
    model = onnx.ModelProto()
    model.CopyFrom(dense)
    graph = model.graph
    produced = {name for node in graph.node for name in node.output} | {value.name for value in graph.input}
    missing = [name for name in cut.outputs if name not in produced]
    if missing:
        raise RuntimeError(f"the precision pass renamed tensors that plugin nodes read: {', '.join(missing[:3])}")
    nodes = _topological_order([*graph.node, *cut.plugins], [value.name for value in original.graph.input], graph)
    del graph.node[:]
    graph.node.extend(nodes)
    cut_inputs = set(cut.inputs)
    inputs = [value for value in graph.input if value.name not in cut_inputs]
    del graph.input[:]
    graph.input.extend(inputs)
    outputs = {value.name: value for value in graph.output}
    del graph.output[:]
    graph.output.extend(outputs.get(value.name, value) for value in original.graph.output)
    # ONNX shape inference cannot type a plugin's outputs: they keep the types the original declares.
    declared = {value.name for value in [*graph.value_info, *graph.output]}
    plugin_outputs = [name for node in cut.plugins for name in node.output if name not in declared]
    graph.value_info.extend(_value_types(original, plugin_outputs))
    model.opset_import.extend(opset for opset in original.opset_import if opset.domain == ONNX_DOMAIN)
    return model


def _topological_order(nodes: list[onnx.NodeProto], inputs: list[str], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in an order where each comes after the producers of its inputs, otherwise in the order given."""
    available = {*inputs, *(initializer.name for initializer in graph.initializer), ""}
    producer = {name for node in nodes for name in node.output}
    waiting_on = [{name for name in node.input if name not in available and name in producer} for node in nodes]
    readers: dict[str, list[int]] = {}
    for index, names in enumerate(waiting_on):
        for name in names:
            readers.setdefault(name, []).append(index)
    ready = [index for index, names in enumerate(waiting_on) if not names]
    heapq.heapify(ready)
    order: list[onnx.NodeProto] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(nodes[index])
        for name in nodes[index].output:
            for reader in readers.get(name, []):
                waiting_on[reader].discard(name)
                if not waiting_on[reader]:
                    heapq.heappush(ready, reader)
    if len(order) != len(nodes):
        raise RuntimeError("the graph has a cycle once the plugin nodes are back")
    return order


def _value_types(model: onnx.ModelProto, names: Sequence[str]) -> list[onnx.ValueInfoProto]:
    """The declared type and shape of each value (surgery declares every one), else what ONNX shape inference says."""
    graph = model.graph
    values = [*graph.value_info, *graph.input, *graph.output]
    declared = {value.name: value for value in values if value.type.tensor_type.elem_type}
    if any(name not in declared for name in names):
        inferred = onnx.shape_inference.infer_shapes(model).graph
        declared = {**{value.name: value for value in [*inferred.value_info, *inferred.output]}, **declared}
    unknown = [name for name in names if name not in declared]
    if unknown:
        raise BadInput(f"the deploy graph does not declare the type of {unknown[0]}, which a plugin node reads or writes")
    return [declared[name] for name in names]


@contextlib.contextmanager
def _scratch(prefix: str) -> Iterator[Path]:
    """A temporary folder, removed when the block ends however it ends (Ctrl-C and SIGTERM included), that also
    takes every temporary file and folder made without a folder of its own meanwhile: ModelOpt's and ONNX Runtime's
    quantizer make theirs in the system's temp folder and remove them only when they finish."""
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        system = tempfile.tempdir
        tempfile.tempdir = folder
        try:
            yield Path(folder)
        finally:
            tempfile.tempdir = system


@contextlib.contextmanager
def _quiet_modelopt(console: Console | None = None) -> Iterator[None]:
    """Runs ModelOpt without its INFO log, ONNX Runtime's calibration prints and progress bars, which would bury
    maskrt's own lines; errors still raise, and `console` keeps printing where it did. Also tells ModelOpt that
    TensorRT is missing where `import tensorrt` finds only tensorrt-stubs (an empty namespace package), which
    ModelOpt would otherwise call."""
    import modelopt.onnx.trt_utils as trt_utils

    loggers = [logging.getLogger(name) for name in ("modelopt.onnx", "modelopt.onnx.autocast")]
    levels = [logger.level for logger in loggers]
    trt_available = trt_utils.TRT_PYTHON_AVAILABLE
    trt_utils.TRT_PYTHON_AVAILABLE = trt_available and hasattr(getattr(trt_utils, "trt", None), "Logger")
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    # A console made to print on stderr follows sys.stderr, which is redirected here: it is pinned to the real one.
    pinned = console if console is not None and console.file in (sys.stdout, sys.stderr) else None
    if pinned is not None:
        pinned.file = pinned.file
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if pinned is not None:
            pinned.file = None  # type: ignore[assignment]  # following sys.stderr again
        trt_utils.TRT_PYTHON_AVAILABLE = trt_available
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _with_metadata(converted: onnx.ModelProto, original: onnx.ModelProto, record: PrecisionRecord) -> onnx.ModelProto:
    """The converted graph with the original's metadata (surgery's DeployRecord among it) and its precision record."""
    del converted.metadata_props[:]
    converted.metadata_props.extend(prop for prop in original.metadata_props if prop.key != PRECISION_KEY)
    write_precision_record(converted, record)
    converted.producer_name = original.producer_name
    return converted
