"""The layers that stages find by the state_dict names of their weights: surgery the ends of the parts it keeps
(convert/locate.py), the check the dense tensors it compares (check/tensors.py), the export's weights loader the
class count (convert/models.py).

torch.onnx.export names each initializer after its state_dict key, and the name survives surgery, ModelOpt's FP16
graph (which gives each use of a shared weight, the RPN head's once per level, a copy: `<name>_1`, ...) and its INT8
graph (`<name>_quantized`, read through Cast and Quantize/DequantizeLinear nodes). A layer is found by what it is,
whatever the graph calls its tensors or wherever it stands.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

OBJECTNESS = "rpn.head.cls_logits"
RPN_DELTAS = "rpn.head.bbox_pred"
RPN_HEAD = "rpn.head."
CLASS_LOGITS = "roi_heads.box_predictor.cls_score"
BOX_REGRESSION = "roi_heads.box_predictor.bbox_pred"
MASK_LOGITS = "roi_heads.mask_predictor.mask_fcn_logits"
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Nodes that carry a tensor through unchanged in value (up to rounding): FP16 casts and INT8 fake quantization.
PASS_THROUGH = ("Identity", "Cast", "QuantizeLinear", "DequantizeLinear")


class LayerFinder:
    """The layers of one graph by their weights' state_dict names."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer = {output: node for node in graph.node for output in node.output}

    def source(self, name: str) -> str:
        """The tensor `name` stands for, through PASS_THROUGH nodes."""
        while name in self.producer and self.producer[name].op_type in PASS_THROUGH:
            name = self.producer[name].input[0]
        return name

    def weight(self, node: onnx.NodeProto) -> str:
        """The name of a layer's weight; "" for a node that is no layer."""
        return self.source(node.input[1]) if node.op_type in LAYER_OPS and len(node.input) > 1 else ""

    def layers(self, layer: str) -> list[onnx.NodeProto]:
        """The nodes whose weight is `{layer}.weight` (or a copy of it), in graph order."""
        named = re.compile(rf"{re.escape(layer)}\.weight(_\d+|_quantized)*")
        return [node for node in self.graph.node if named.fullmatch(self.weight(node))]

    def output(self, node: onnx.NodeProto) -> str:
        """A layer's output: a Linear exported as MatMul then Add(bias) ends at the Add."""
        if node.op_type == "MatMul":
            adds = [n for n in self.graph.node if n.op_type == "Add" and node.output[0] in n.input]
            if len(adds) == 1:
                return str(adds[0].output[0])
        return str(node.output[0])

    def outputs(self, layer: str) -> list[str]:
        """The outputs of the layers of `{layer}.weight`, in graph order."""
        return [self.output(node) for node in self.layers(layer)]
