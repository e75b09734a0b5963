"""FP16 and INT8 deploy graphs of shapes-demo, in both plugin modes: ONNX Runtime runs them and they answer like the
FP32 deploy graph on val images; their types and Q/DQ placement, read back from the produced graphs with onnx.

Tolerances against the FP32 graph on the same images: every detection scoring at least SURE (0.3), either side, is
matched (same class); FP16 (run as fp16_rounding_model rewrites it) with box IoU >= 0.99, scores within 0.01 and M×M
mask probabilities within 0.005 on average; INT8 with box IoU >= 0.9, scores within 0.1 and masks within 0.05 on
average. A detection scoring below SURE may be missing or extra: it sits at the score threshold of a model that is
not exact either way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torchvision.ops import box_iou

from maskrt.calib.shapes import render_sample
from maskrt.convert.precision import PERCENTILE, PERCENTILE_BINS, autocast_fp16, fp16_rounding_model, quantize_int8
from maskrt.plugins import cpu_session
from maskrt.contracts.plugins import ONNX_DOMAIN
from maskrt.runtime.preprocess import letterbox

from detection_support import OUTPUTS
from matching import match_detections

SURE = 0.3
SIZE = (128, 128)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # shapes-demo's normalisation (ImageNet's)
FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
# Where the export's own modules are: the parts a precision pass may lower (torchvision's module paths).
DENSE_PARTS = ("/backbone/", "/rpn/head/", "/roi_heads/box_head/", "/roi_heads/box_predictor/", "/roi_heads/mask_head/", "/roi_heads/mask_predictor/")


def shapes_images(seed: int, indices: range) -> np.ndarray:
    """[N,3,128,128] letterboxed images of the shapes dataset `seed` (1: val, 0: train)."""
    return np.stack([letterbox(render_sample(seed, index, SIZE[0])[0], SIZE, MEAN)[0] for index in indices])


VAL_IMAGES = shapes_images(seed=1, indices=range(3))
CALIBRATION_IMAGES = 4


@dataclass(frozen=True)
class Deploy:
    path: Path  # shapes-demo's FP32 deploy graph
    reference: dict[str, np.ndarray]  # its outputs on VAL_IMAGES


@pytest.fixture(scope="module")
def deploy(shapes_demo_deploy: Callable[[str], Path]) -> Callable[[str], Deploy]:
    """deploy(plugins): the session's shapes-demo deploy graph of that plugin mode, run once on the val images."""
    graphs: dict[str, Deploy] = {}

    def converted(plugins: str) -> Deploy:
        if plugins not in graphs:
            path = shapes_demo_deploy(plugins)
            graphs[plugins] = Deploy(path, run_each(path, VAL_IMAGES))
        return graphs[plugins]

    return converted


def run_each(path: Path | onnx.ModelProto, images: np.ndarray) -> dict[str, np.ndarray]:
    """The batch-1 graph on each image (which fills the canvas), stacked as one batch."""
    session = cpu_session(path)
    names = [value.name for value in session.get_inputs()]
    outputs = [session.run(list(OUTPUTS), {name: feeds[name] for name in names}) for feeds in map(canvas_feeds, images)]
    return {name: np.concatenate([output[i] for output in outputs]) for i, name in enumerate(OUTPUTS)}


def assert_close(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], iou: float, score: float, mask: float) -> None:
    """Every detection either side scoring SURE or more is matched (same class, box IoU >= iou), with scores within
    `score` and M×M mask probabilities within `mask` on average."""
    assert (reference["num_detections"] >= 3).all(), "shapes-demo should find shapes in every val image"
    for b, image in enumerate(match_detections(reference, candidate, min_iou=iou)):
        sure_missing = [i for i in image.missing if reference["scores"][b, i] >= SURE]
        sure_extra = [j for j in image.extra if candidate["scores"][b, j] >= SURE]
        assert not sure_missing and not sure_extra, f"image {b}: missing {sure_missing}, extra {sure_extra}"
        assert image.worst_score <= score, image
        assert mean_mask_difference(reference, candidate, b) <= mask, image


def mean_mask_difference(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], b: int) -> float:
    """Mean |difference| of the M×M masks of image b's SURE detections and their candidates of the same class with
    the most overlapping boxes."""
    n, m = int(reference["num_detections"][b, 0]), int(candidate["num_detections"][b, 0])
    ious = box_iou(torch.from_numpy(reference["boxes"][b, :n]), torch.from_numpy(candidate["boxes"][b, :m])).numpy()
    ious[reference["classes"][b, :n, None] != candidate["classes"][b, None, :m]] = -1
    sure = [i for i in range(n) if reference["scores"][b, i] >= SURE]
    return float(np.mean([np.abs(reference["masks"][b, i] - candidate["masks"][b, ious[i].argmax()]).mean() for i in sure]))


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_fp16_graph_answers_like_fp32(deploy: Callable[[str], Deploy], plugins: str) -> None:
    fp32 = deploy(plugins)
    fp16 = autocast_fp16(onnx.load(fp32.path))
    assert_close(fp32.reference, run_each(fp16_rounding_model(fp16), VAL_IMAGES), iou=0.99, score=0.01, mask=0.005)
    assert_fp32_where_boxes_are_made(fp16)


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value: declared in the graph, else ONNX shape inference's."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {value.name: value.type.tensor_type.elem_type for value in [*graph.value_info, *graph.input, *graph.output]}
    types.update({value.name: value.type.tensor_type.elem_type for value in [*model.graph.value_info, *model.graph.output]})
    types.update({initializer.name: initializer.data_type for initializer in graph.initializer})
    return types


def assert_fp32_where_boxes_are_made(model: onnx.ModelProto) -> None:
    """Walking back from the boxes, scores and masks outputs to where FP16 values are cast up: every float tensor
    on the way is FP32, the walk passes box decoding, both NMS, the score Softmax and the mask Sigmoid, and it ends
    at the reused heads. Every RoIAlign reads FP32 boxes and feature maps."""
    types = value_types(model)
    producer = {name: node for node in model.graph.node for name in node.output}
    seen: set[str] = set()
    ops: list[str] = []
    ends: set[str] = set()
    stack = ["boxes", "scores", "masks"]
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Cast" and types[node.input[0]] == HALF:
            ends.add(producer[node.input[0]].name)
            continue
        ops.append(node.op_type)
        for tensor in [*node.input, *node.output]:
            assert types.get(tensor) not in (HALF, None) or tensor == "", f"{node.name} ({node.op_type}): {tensor} is not FP32"
        stack.extend(tensor for tensor in node.input if tensor)
    assert ops.count("Exp") >= 4 and ops.count("Softmax") == 1 and ops.count("Sigmoid") == 2, sorted(set(ops))
    assert ops.count("BatchedNMS") + ops.count("NonMaxSuppression") == 2, sorted(set(ops))
    assert ends and all(end.startswith(DENSE_PARTS) for end in ends), ends
    for node in model.graph.node:
        if node.op_type in ("RoiAlign", "MultilevelRoIAlign"):
            assert all(types[tensor] == FLOAT for tensor in node.input if types[tensor] in (FLOAT, HALF)), node.name


def calibration_batches(count: int) -> list[dict[str, np.ndarray]]:
    """Batches for the batch-1 graph from shapes' train images (seed 0), never the val images."""
    return [canvas_feeds(image) for image in shapes_images(seed=0, indices=range(count))]


def canvas_feeds(image: np.ndarray) -> dict[str, np.ndarray]:
    """A batch of one [3,H,W] image that fills the canvas: images, and image_sizes for graphs that read them."""
    return {"images": image[None], "image_sizes": np.array([image.shape[1:]], np.int32)}


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_int8_graph_answers_like_fp32(deploy: Callable[[str], Deploy], plugins: str) -> None:
    fp32 = deploy(plugins)
    int8 = quantize_int8(onnx.load(fp32.path), calibration_batches(CALIBRATION_IMAGES))
    assert_close(fp32.reference, run_each(int8, VAL_IMAGES), iou=0.9, score=0.1, mask=0.05)
    assert_qdq_only_in_dense_parts(int8)


def assert_qdq_only_in_dense_parts(model: onnx.ModelProto) -> None:
    """Every dequantized value is read inside the backbone, FPN or a head, never by the rebuilt middle or a plugin;
    each of those parts has quantized convolutions or matrix products, and no predictor of the heads is quantized."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    quantized: set[str] = set()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            for reader in readers.get(node.output[0], []):
                assert reader.name.startswith(DENSE_PARTS) and reader.domain != ONNX_DOMAIN, f"{reader.name} reads {node.name}"
                if reader.op_type in ("Conv", "Gemm"):
                    quantized.add(reader.name)
        if node.op_type == "QuantizeLinear":
            assert all(reader.op_type == "DequantizeLinear" for reader in readers[node.output[0]]), node.name
    for part in ("/backbone/body/", "/backbone/fpn/", "/rpn/head/conv/", "/roi_heads/box_head/", "/roi_heads/mask_head/"):
        assert any(name.startswith(part) for name in quantized), f"nothing quantized in {part}"
    predictors = ("/rpn/head/cls_logits", "/rpn/head/bbox_pred", "/roi_heads/box_predictor/", "/roi_heads/mask_predictor/")
    assert not [name for name in quantized if name.startswith(predictors)]


def test_percentile_calibration_saturates_the_rarest_values(deploy: Callable[[str], Deploy]) -> None:
    """The stem's input is the normalised image, which NumPy computes too: its max scale is max |x| / 127 and its
    percentile scale the PERCENTILE-th percentile of |x| / 127, within a histogram bin. No activation's percentile
    scale is above its max scale, and the long-tailed ones' are well below."""
    model = onnx.load(deploy("native").path)
    batches = calibration_batches(2)
    scales = {method: activation_scales(quantize_int8(model, batches, method)) for method in ("max", "percentile")}
    assert scales["max"].keys() == scales["percentile"].keys()
    assert all(scales["percentile"][name] <= scales["max"][name] for name in scales["max"])
    images = np.concatenate([batch["images"] for batch in batches])
    normalised = np.abs((images / 255 - np.reshape(MEAN, (1, 3, 1, 1))) / np.reshape(STD, (1, 3, 1, 1)))
    stem = next(node.input[0] for node in model.graph.node if node.name == "/backbone/body/conv1/Conv")
    assert scales["max"][stem] == pytest.approx(normalised.max() / 127, rel=1e-5)
    expected = np.percentile(normalised, PERCENTILE) / 127
    assert scales["percentile"][stem] == pytest.approx(expected, abs=normalised.max() / 127 / PERCENTILE_BINS * 1.01)
    narrowed = [name for name in scales["max"] if scales["percentile"][name] < 0.9 * scales["max"][name]]
    assert len(narrowed) >= len(scales["max"]) // 4, narrowed


def activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """The scale of each quantized activation (not weights), by the tensor's name."""
    initializers = {initializer.name: initializer for initializer in model.graph.initializer}
    return {
        node.input[0]: float(onnx.numpy_helper.to_array(initializers[node.input[1]]))
        for node in model.graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers
    }


def test_a_calibration_method_that_does_not_exist_is_refused(deploy: Callable[[str], Deploy]) -> None:
    with pytest.raises(ValueError, match=r"calibration method must be one of entropy, max, percentile, got 'minmax'"):
        quantize_int8(onnx.load(deploy("native").path), calibration_batches(1), method="minmax")


def test_calibration_batches_that_do_not_fit_the_graph_are_refused(deploy: Callable[[str], Deploy]) -> None:
    model = onnx.load(deploy("native").path)
    with pytest.raises(ValueError, match=r"calibration batch 0: the graph's input images is float32 \[1, 3, 128, 128\], got float32 \[2, 3, 128, 128\]"):
        quantize_int8(model, [{"images": shapes_images(seed=0, indices=range(2))}])
    with pytest.raises(ValueError, match="at least one batch"):
        quantize_int8(model, [])
