"""NvDsInferParseCustomMrcnnTLTV2's steps, as DeepStream's source takes them (deepstream_tao_apps
post_processor/nvdsinfer_custombboxparser_tao.cpp, L257-330), written out here as the oracle of the layout that
surgery's `--layout deepstream` makes (contracts/records.py DEEPSTREAM_OUTPUTS)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskrt.serve.deepstream import DETECTIONS, MASKS


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
