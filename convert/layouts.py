"""The deploy graph's outputs in a layout another runtime reads as it is (contracts/records.py, LAYOUTS).

DeepStream's: the outputs that its shipped Mask R-CNN parser, NvDsInferParseCustomMrcnnTLTV2, finds by name and
reads without a line of C++ of maskrt's. It reads each detection as six floats, y1, x1, y2, x2 in network-input
pixels, the class id and the score, skips a row scoring below the config's pre-cluster-threshold (rows past
num_detections are zero), and copies the M x M mask of the detection's class from [K, C, M, M], where C is the
config's num-detected-classes.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from maskrt.contracts.records import DEEPSTREAM_OUTPUTS, REBUILT_PREFIX
from maskrt.convert.graphs import INT64, Emitter, columns
from maskrt.convert.rebuild import DeployOutputs


def deepstream_outputs(graph: gs.Graph, outputs: DeployOutputs, num_classes: int) -> dict[str, gs.Variable]:
    """DEEPSTREAM_OUTPUTS by name, made from the deploy graph's `outputs`."""
    emit = Emitter(graph, f"{REBUILT_PREFIX}/deepstream")
    last = np.array([-1], INT64)
    x1, y1, x2, y2 = (columns(emit, outputs.boxes, i, i + 1) for i in range(4))
    labels = emit("Cast", outputs.classes, to=1)  # float32
    detections = emit("Concat", y1, x1, y2, x2, emit("Unsqueeze", labels, last), emit("Unsqueeze", outputs.scores, last), axis=2)
    # Each detection's class channel holds its mask; the others are zero: one-hot [B,K,C] x masks [B,K,M,M].
    one_hot = emit("Cast", emit("Equal", emit("Unsqueeze", outputs.classes, last), np.arange(num_classes, dtype=np.int32)), to=1)
    masks = emit("Mul", emit("Unsqueeze", one_hot, np.array([3, 4], INT64)), emit("Unsqueeze", outputs.masks, np.array([2], INT64)))
    detection_name, mask_name = DEEPSTREAM_OUTPUTS
    return {detection_name: detections, mask_name: masks}
