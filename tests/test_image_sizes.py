"""The deploy graph's image_sizes input: each letterboxed image answers as torchvision answers for that image alone at
its own size (its padded extent, its anchors and strides, proposals and boxes clipped to it), in both plugin modes;
--single-input graphs keep one input and clip to the whole canvas."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from detection_support import Case, assert_matches, convert, letterboxed_images, plain_export, run_deploy
from runtime_support import shapes_frame
from test_surgery import sliver_model
from torchvision_reference import keep_input_size, reference_outputs

from maskrt.cli.main import main as maskrt
from maskrt.contracts.records import DEPLOY_KEY, IMAGENET_MEAN, read_metadata
from maskrt.convert.extent import extent_table, stride_table
from maskrt.convert.models import load_model
from maskrt.runtime.preprocess import letterbox


def assert_equal_answers(deploy: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    """assert_matches, on a reference that detects something."""
    assert reference["num_detections"].sum() >= len(reference["num_detections"]), "the test should detect something"
    assert_matches(deploy, reference)


def padded_with_mean(images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The images with everything outside (h, w) set to the normalisation mean, as the letterbox pads."""
    padded = images.copy()
    mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(3, 1, 1) * 255
    for image, (h, w) in zip(padded, sizes):
        image[:, h:, :] = mean
        image[:, :, w:] = mean
    return padded


def letterboxed(frames: list[np.ndarray], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    boxes = [letterbox(frame, size, IMAGENET_MEAN) for frame in frames]
    return np.stack([canvas for canvas, _ in boxes]), np.array([box.resized for _, box in boxes], np.int32)


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_frames_of_other_shapes_answer_as_torchvision_at_their_own_size(
    shapes_demo_graph: Callable[..., Path], plugins: str
) -> None:
    """Wide, tall and square frames in one batch of a 128x128 model: 96x128, 128x96 and 128x128 inside the canvas.
    A 96-pixel side is 3 x 32, so torchvision's pool level has 2 cells of stride 48 where the canvas has stride 64."""
    model = load_model("shapes-demo", None, None)
    deploy = shapes_demo_graph(2, plugins)
    wide, tall, square = (150, 200), (200, 150), (128, 128)
    for first, pair in zip(range(0, 6, 2), [(wide, tall), (wide, square), (tall, wide)]):
        frames = [shapes_frame(first + i, size=size) for i, size in enumerate(pair)]
        images, sizes = letterboxed(frames, (128, 128))
        assert_equal_answers(run_deploy(deploy, images, sizes), reference_outputs(model, images, sizes))


def test_the_resnet18_export_follows_image_sizes(resnet18_plain: Case, converted: Callable[[Case, str], Path]) -> None:
    """A plain export of a ResNet-18 FPN at 320x480, batch 2: two images that fill part of the canvas."""
    sizes = np.array([[320, 352], [224, 480]], np.int32)
    images = padded_with_mean(resnet18_plain.images, sizes)
    deploy = converted(resnet18_plain, "native")
    assert_equal_answers(run_deploy(deploy, images, sizes), reference_outputs(resnet18_plain.model, images, sizes))


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_slivers_on_an_image_s_far_edge_pool_as_torchvision_at_its_size(tmp_path: Path, plugins: str) -> None:
    """torchvision's maps end at the image's padded extent, 96 columns of a 128-wide canvas here: a sliver on the
    image's right edge samples past them, where torchvision reads zero and the canvas' maps hold the edge's copies."""
    sizes = np.array([[128, 96]], np.int32)
    images = padded_with_mean(letterboxed_images(1, 128, 128, seed=1), sizes)
    model = sliver_model(images[:, :, :, :96])
    reference = reference_outputs(model, images, sizes)
    x1, _, x2, _ = reference["boxes"][0, : reference["num_detections"][0, 0]].T
    assert ((x2 == 96) & (x2 - x1 < 4)).sum() >= 2, "the model should detect slivers on the image's right edge"
    keep_input_size(model, 128, 128)
    exported = plain_export(model, images, tmp_path / "model.onnx")
    assert_equal_answers(run_deploy(convert(exported, plugins), images, sizes), reference)


def test_global_averages_follow_image_sizes(mobilenet_maskrt: Case, converted: Callable[[Case, str], Path]) -> None:
    """MobileNetV3's squeeze-and-excitation blocks average over the whole map: torchvision's, not the canvas'."""
    sizes = np.array([[288, 480], [320, 416]], np.int32)
    images = padded_with_mean(mobilenet_maskrt.images, sizes)
    deploy = converted(mobilenet_maskrt, "native")
    assert_equal_answers(run_deploy(deploy, images, sizes), reference_outputs(mobilenet_maskrt.model, images, sizes))


def test_a_single_input_graph_reads_images_only_and_clips_to_the_canvas(shapes_demo_graph: Callable[..., Path]) -> None:
    deploy = shapes_demo_graph(1, "maskrt", "--single-input")
    model = onnx.load(deploy)
    assert [i.name for i in model.graph.input] == ["images"]
    assert read_metadata(model, DEPLOY_KEY)["single_input"] is True
    two_inputs = onnx.load(shapes_demo_graph(1, "maskrt"))
    assert [i.name for i in two_inputs.graph.input] == ["images", "image_sizes"]
    assert read_metadata(two_inputs, DEPLOY_KEY)["single_input"] is False
    images, _ = letterboxed([shapes_frame(3)], (128, 128))
    assert_equal_answers(run_deploy(deploy, images), reference_outputs(load_model("shapes-demo", None, None), images))


def test_trt_convert_keeps_one_input_through_precision(shapes_demo_export: Path, tmp_path: Path) -> None:
    """--single-input reaches surgery when trt-convert goes on to an FP16 graph (--onnx-only, no TensorRT needed)."""
    output = tmp_path / "model.fp16.onnx"
    assert maskrt(["convert", str(shapes_demo_export), "--single-input", "--precision", "fp16", "--onnx-only", "-o", str(output)]) == 0
    model = onnx.load(output)
    assert [i.name for i in model.graph.input] == ["images"]
    assert read_metadata(model, DEPLOY_KEY)["single_input"] is True


def test_the_extent_tables_are_torchvision_s_grid_sizes() -> None:
    """ResNet-FPN at 800 rows: torchvision's padded height P gives maps of P/4 .. P/32 rows and a pool level of
    ceil(P/64), whose anchor stride is P // that; checked against torchvision's own AnchorGenerator strides."""
    padded = np.arange(32, 801, 32)
    assert (extent_table(800, 200, 32)[:, 0] == padded // 4).all()
    assert (extent_table(800, 25, 32)[:, 0] == padded // 32).all()
    pool = np.ceil(padded / 64).astype(int)
    assert (extent_table(800, 13, 32)[:, 0] == pool).all()
    assert (stride_table(800, 13, 32)[:, 0] == padded // pool).all()
    assert stride_table(96, 2, 32)[2, 0] == 48 and stride_table(128, 2, 32)[2, 0] == 48
