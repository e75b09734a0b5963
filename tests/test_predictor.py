"""The Predictor against stock torchvision: model(images) on the same original images, its own transform and
paste, and the Predictor on the deploy graph answer alike (same labels, box IoU >= 0.99, scores within 1e-3,
pasted-mask IoU >= 0.99), in both plugin modes and across batches; bad images are refused in one sentence."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from maskrt.contracts.errors import BadInput
from maskrt.convert.models import load_model
from maskrt.runtime.backends import ModelInfo, open_backend
from maskrt.runtime.predictor import Predictor

from runtime_support import assert_same_detections, shapes_frame, stock_torchvision


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Frames of 150x200 (wide), 200x150 (tall) and 128x128: letterboxed to 96x128, 128x96 and 128x128."""
    sizes = [(150, 200), (200, 150), (128, 128)] * 2
    return [shapes_frame(i, size=size) for i, size in enumerate(sizes)]


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_detections_equal_stock_torchvision_on_the_original_frames(
    shapes_demo_graph: Callable[..., Path], frames: list[np.ndarray], plugins: str
) -> None:
    predictor = Predictor(shapes_demo_graph(2, plugins), score_threshold=0.0)
    stock = stock_torchvision(load_model("shapes-demo", None, None), frames)
    found = predictor(frames)  # 6 frames in batches of 2
    assert isinstance(found, list) and len(found) == len(frames)
    assert sum(len(f) for f in found) >= len(frames)
    for index, (ours, theirs) in enumerate(zip(found, stock)):
        assert ours.image_size == frames[index].shape[:2] and ours.masks.shape[1:] == frames[index].shape[:2]
        assert_same_detections(ours, theirs, f"frame {index} ({plugins})")


def test_one_image_a_path_bgr_and_a_padded_last_batch(
    shapes_demo_graph: Callable[..., Path], frames: list[np.ndarray], tmp_path: Path
) -> None:
    rgb = Predictor(shapes_demo_graph(2, "native"))
    bgr = Predictor(shapes_demo_graph(2, "native"), channels="bgr")
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    one = rgb(frames[0])
    assert not isinstance(one, list)
    assert len(one) >= 1 and (one.scores >= 0.5).all()
    assert one.class_names == [rgb.info.class_names[label] for label in one.labels]
    for other in (rgb(str(path)), rgb(path), bgr(cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR)), rgb(frames[:3])[0]):
        assert not isinstance(other, list)
        assert np.array_equal(other.boxes, one.boxes) and np.array_equal(other.masks, one.masks)


def test_coco_results_load_in_pycocotools(shapes_demo_graph: Callable[..., Path], frames: list[np.ndarray]) -> None:
    found = Predictor(shapes_demo_graph(1, "native"))(frames[0])
    assert not isinstance(found, list)
    results = found.coco_results(image_id=7)
    assert len(results) == len(found) and {r["image_id"] for r in results} == {7}
    for result, mask in zip(results, found.masks):
        assert np.array_equal(coco_mask.decode(result["segmentation"]).astype(bool), mask)
        x, y, w, h = result["bbox"]
        assert w > 0 and h > 0 and result["category_id"] in (1, 2, 3)


def test_the_backend_says_what_the_model_is(shapes_demo_graph: Callable[..., Path]) -> None:
    info = open_backend(shapes_demo_graph(2, "maskrt")).info
    assert info == ModelInfo(
        batch=2,
        input_size=(128, 128),
        image_mean=(0.485, 0.456, 0.406),
        image_std=(0.229, 0.224, 0.225),
        num_classes=4,
        class_names=("__background__", "circle", "square", "triangle"),
        mask_size=28,
        single_input=False,
        plugins="maskrt",
        precision="fp32",
    )


@pytest.mark.parametrize(
    "image, words",
    [
        (np.full((150, 200, 3), 0.5, np.float32), ["values in 0..1", "uint8", "(image * 255).round().astype(np.uint8)"]),
        (np.zeros((3, 150, 200), np.uint8), ["[3, 150, 200]", "channels first"]),
        (np.zeros((150, 200), np.uint8), ["[150, 200]", "[h, w, 3]"]),
        (np.zeros((150, 200, 3), np.uint16), ["uint16", "uint8"]),
        ([[1, 2, 3]], ["an image path", "list"]),
    ],
)
def test_images_it_cannot_take_are_refused_in_one_sentence(
    shapes_demo_graph: Callable[..., Path], image: object, words: list[str]
) -> None:
    predictor = Predictor(shapes_demo_graph(1, "native"))
    with pytest.raises(ValueError) as error:
        predictor([image])  # type: ignore[list-item]
    message = str(error.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize(
    "given, words",
    [
        (None, ["got None"]),
        (b"\x89PNG\r\n\x1a\n", ["got bytes", "cv2.imdecode", "or pass its path"]),
        (7, ["got an int"]),
        ({"image": "a.png"}, ["got a dict"]),
    ],
)
def test_what_is_not_an_image_or_a_list_is_refused_in_one_sentence(
    shapes_demo_graph: Callable[..., Path], given: object, words: list[str]
) -> None:
    """None was "'NoneType' object is not iterable", and a file's bytes were taken for a list of images ("got a int")."""
    with pytest.raises(BadInput) as error:
        Predictor(shapes_demo_graph(1, "native"))(given)  # type: ignore[arg-type]
    message = str(error.value)
    assert message.startswith("expected an image path, a uint8 [h, w, 3] array") and all(w in message for w in words), message


def test_a_file_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    for name, data in (("model.onnx", b"\x08\x07 not a protobuf \xff" * 50), ("model.pth", b"weights")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match=str(path)):
            Predictor(path)
    with pytest.raises(ValueError, match="file not found"):
        Predictor(tmp_path / "missing.onnx")
