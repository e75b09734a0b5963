"""DeepStream's layout (/work/notes and serve/deepstream.py say what it is) made from a `--single-input` deploy graph
with plain ONNX ops, until surgery's `--layout deepstream` makes it; and NvDsInferParseCustomMrcnnTLTV2's steps, as
DeepStream's source takes them (deepstream_tao_apps post_processor/nvdsinfer_custombboxparser_tao.cpp, L257-330)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from maskrt.serve.deepstream import DETECTIONS, MASKS


def deepstream_layout(graph: Path, output: Path) -> Path:
    """generate_detections [B,K,6] (y1, x1, y2, x2, class, score) and mask_fcn_logits/BiasAdd [B,K,C,M,M] in place
    of the deploy graph's five outputs."""
    model = onnx.load(str(graph))
    outputs = {o.name: o for o in model.graph.output}
    batch, rows = (d.dim_value for d in outputs["scores"].type.tensor_type.shape.dim)
    mask_size = outputs["masks"].type.tensor_type.shape.dim[-1].dim_value
    import json

    record = json.loads({p.key: p.value for p in model.metadata_props}["maskrt.deploy"])
    classes = int(record["num_classes"])
    nodes, constants = [], []

    def constant(name: str, value: np.ndarray) -> str:
        constants.append(numpy_helper.from_array(value, f"ds/{name}"))
        return f"ds/{name}"

    columns = []
    for index in (1, 0, 3, 2):  # y1, x1, y2, x2 from x1, y1, x2, y2
        name = f"ds/box{index}"
        nodes.append(helper.make_node("Slice", ["boxes", constant(f"s{index}", np.array([index], np.int64)),
                                                constant(f"e{index}", np.array([index + 1], np.int64)),
                                                constant(f"a{index}", np.array([2], np.int64))], [name]))  # fmt: skip
        columns.append(name)
    axis_last = constant("axis_last", np.array([2], np.int64))
    nodes += [
        helper.make_node("Cast", ["classes"], ["ds/classes_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["ds/classes_f", axis_last], ["ds/class_col"]),
        helper.make_node("Unsqueeze", ["scores", axis_last], ["ds/score_col"]),
        helper.make_node("Concat", [*columns, "ds/class_col", "ds/score_col"], [DETECTIONS], axis=2),
        helper.make_node("Unsqueeze", ["classes", axis_last], ["ds/classes_col"]),
        helper.make_node("Equal", ["ds/classes_col", constant("arange", np.arange(classes, dtype=np.int32))], ["ds/onehot_b"]),
        helper.make_node("Cast", ["ds/onehot_b"], ["ds/onehot"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["ds/onehot", constant("axes_hw", np.array([3, 4], np.int64))], ["ds/onehot5"]),
        helper.make_node("Unsqueeze", ["masks", axis_last], ["ds/masks5"]),
        helper.make_node("Mul", ["ds/onehot5", "ds/masks5"], [MASKS]),
    ]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(constants)
    del model.graph.output[:]
    model.graph.output.extend([
        helper.make_tensor_value_info(DETECTIONS, TensorProto.FLOAT, [batch, rows, 6]),
        helper.make_tensor_value_info(MASKS, TensorProto.FLOAT, [batch, rows, classes, mask_size, mask_size]),
    ])  # fmt: skip
    onnx.checker.check_model(model)
    onnx.save(model, str(output))
    return output


@dataclass
class ParsedObject:
    """NvDsInferInstanceMaskInfo as the parser fills it."""

    left: float
    top: float
    width: float
    height: float
    class_id: int
    confidence: float
    mask: np.ndarray  # float32 [mask_height, mask_width]


def parse_like_deepstream(layers: dict[str, np.ndarray], network_size: tuple[int, int], classes_configured: int,
                          pre_cluster_threshold: float) -> list[ParsedObject]:  # fmt: skip
    """NvDsInferParseCustomMrcnnTLTV2 on one image's output layers (nvinfer hands the parser one frame's buffers,
    without the batch dimension)."""
    height, width = network_size
    # L264-273: the two layers by exact name, FLOAT only
    detection_layer, mask_layer = layers[DETECTIONS], layers[MASKS]
    assert detection_layer.dtype == np.float32 and mask_layer.dtype == np.float32
    # L281: the mask layer has 4 dims: [det_max_instances, num_classes, mask_h, mask_w] (L287-295)
    assert mask_layer.ndim == 4
    det_max_instances, _, mask_h, mask_w = mask_layer.shape
    # L297: the detections read as rows of 6 floats, MrcnnRawDetection {y1, x1, y2, x2, class_id, score} (L36-38)
    raw = np.ascontiguousarray(detection_layer).reshape(-1)[: det_max_instances * 6].reshape(det_max_instances, 6)
    flat_masks = np.ascontiguousarray(mask_layer).reshape(-1, mask_h * mask_w)  # float(*)[mask_w * mask_h]
    found = []
    for i in range(det_max_instances):  # L301
        y1, x1, y2, x2, class_id, score = (np.float32(v) for v in raw[i])
        if score < np.float32(pre_cluster_threshold):  # L304: class 0's pre-cluster threshold for every row
            continue
        clip_w = lambda v: np.float32(min(max(v, 0), width - 1))  # noqa: E731 - CLIP(a, 0, W - 1)
        clip_h = lambda v: np.float32(min(max(v, 0), height - 1))  # noqa: E731
        left, top = clip_w(x1), clip_h(y1)  # L308-309
        obj_width, obj_height = clip_w(x2) - x1, clip_h(y2) - y1  # L310-311: the unclipped x1, y1
        if obj_width <= 0 or obj_height <= 0:  # L312
            continue
        label = int(class_id)  # L314: static_cast<int>
        row = flat_masks[i * classes_configured + label]  # L322-323: out_mask + i * numClassesConfigured + classId
        found.append(ParsedObject(float(left), float(top), float(obj_width), float(obj_height), label, float(score),
                                  row.reshape(mask_h, mask_w).copy()))  # fmt: skip
    return found
