"""For the tests that meet a real TensorRT on a CPU: TensorRT for RTX and TensorRT 11.4's lean runtime, each put in
place of `tensorrt` in a subprocess, and the dense part of a deploy graph, which TensorRT for RTX can build."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

# TensorRT for RTX as `tensorrt` (and as `tensorrt_rtx`, the name Polygraphy's RTX mode imports): a builder and ONNX
# parser that run on a CPU, with TensorRT 11's typing (strongly typed networks only, no precision flags, no
# calibrator). It has no plugin layers, and its CPU builds cannot read a timing cache back (that needs CUDA).
RTX = """
import os, sys
os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = "1"
import tensorrt_rtx_bindings
import tensorrt_rtx_bindings.tensorrt_rtx as rtx
rtx.__version__ = tensorrt_rtx_bindings.__version__
sys.modules["tensorrt"] = sys.modules["tensorrt_rtx"] = rtx
"""
# TensorRT 11.4's lean runtime as `tensorrt`: a TensorRT 11 without a builder.
LEAN = """
import sys
import tensorrt_lean
sys.modules["tensorrt"] = tensorrt_lean
"""

# An install without the export's dependencies (a Jetson's): importing any of them fails.
WITHOUT_TORCH = """
import sys
for name in ("torch", "torchvision", "onnx_graphsurgeon"):
    sys.modules[name] = None
"""


def run_python(standin: str, code: str, cache: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Runs `code` after `standin` (RTX, LEAN or WITHOUT_TORCH) in a fresh Python, with maskrt's caches under `cache`."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.run([sys.executable, "-c", standin + code], capture_output=True, text=True, timeout=timeout, env=env)


def run_maskrt(standin: str, argv: Sequence[str], cache: Path) -> subprocess.CompletedProcess[str]:
    """`maskrt ARGV...` with `standin` as TensorRT; stderr is a pipe, so the output is what a log gets."""
    return run_python(standin, f"from maskrt.cli.main import main\nsys.exit(main({list(argv)!r}))\n", cache)


def _rebuilt(node: onnx.NodeProto) -> bool:
    """A node of the part surgery rebuilds between the reused ones (the preprocessing is part of the dense part)."""
    return bool(node.domain) or (node.name.startswith("/maskrt/") and not node.name.startswith("/maskrt/preprocess"))


def _head_input(pooled: str, deploy: onnx.ModelProto) -> str:
    """The tensor a box or mask head reads of the features MultilevelRoIAlign pooled: past the rebuilt nodes between
    them (the image extent's pooling share, which depends on the RoIs, so on NMS, and a reshape)."""
    name = pooled
    while True:
        readers = [node for node in deploy.graph.node if name in node.input]
        if not all(_rebuilt(node) for node in readers):
            return name
        (name,) = [node.output[0] for node in readers if node.input[0] == name]


def dense_boundary(deploy: onnx.ModelProto) -> tuple[dict[str, gs.Variable], list[str]]:
    """The dense part of an FP32 deploy graph of plugin mode: its inputs (`images`, `image_sizes` where the graph has
    it, whose extents mask the backbone's inputs, and the pooled features that the box and mask heads read from
    MultilevelRoIAlign past the rebuilt nodes that scale and reshape them, with their types and shapes) and its
    outputs (the FPN levels, RPN head outputs and head outputs that the rebuilt middle reads)."""
    producer = {output: node for node in deploy.graph.node for output in node.output}
    outputs: list[str] = []
    for node in deploy.graph.node:
        if _rebuilt(node):
            for name in node.input:
                if name in producer and not _rebuilt(producer[name]) and name not in outputs:
                    outputs.append(name)
    pooled = [_head_input(node.output[0], deploy) for node in deploy.graph.node if node.op_type == "MultilevelRoIAlign"]
    tensors = gs.import_onnx(deploy).tensors()
    given = [value.name for value in deploy.graph.input]
    inputs = {name: gs.Variable(name, tensors[name].dtype, tensors[name].shape) for name in [*given, *pooled]}
    return inputs, outputs


def dense_part(model: onnx.ModelProto, boundary: tuple[dict[str, gs.Variable], list[str]]) -> onnx.ModelProto:
    """`model` (the deploy graph, or its FP16 or INT8 graph) cut to the boundary found on the FP32 deploy graph, with
    its metadata."""
    inputs, outputs = boundary
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    for name, reference in inputs.items():
        tensors[name].inputs.clear()
        tensors[name].dtype, tensors[name].shape = reference.dtype, reference.shape
    graph.inputs = [tensors[name] for name in inputs]
    graph.outputs = [tensors[name] for name in outputs]
    graph.cleanup().toposort()
    dense = gs.export_onnx(graph)
    dense.ir_version = model.ir_version
    dense.metadata_props.extend(model.metadata_props)
    return dense
