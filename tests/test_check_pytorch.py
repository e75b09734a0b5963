"""maskrt.check.pytorch, the PyTorch side of `maskrt check`, against the tests' own (tests/torchvision_reference.py):
the same answer, bit for bit, in the deploy graph's output format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskrt.calib.shapes import render_sample
from maskrt.check.pytorch import deploy_outputs, keep_input_size
from maskrt.convert.models import load_model

from torchvision_reference import reference_outputs


@pytest.fixture(scope="module")
def shapes_demo() -> tuple[torch.nn.Module, np.ndarray]:
    """shapes-demo and four of its val images (seed 1), [4,3,128,128] RGB 0..255."""
    images = np.stack([render_sample(seed=1, index=i, size=128)[0] for i in range(4)]).transpose(0, 3, 1, 2)
    return load_model("shapes-demo", None, None), images.astype(np.float32)


def assert_identical(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(got) == set(expected) == {"num_detections", "boxes", "scores", "classes", "masks"}
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_deploy_outputs_of_whole_canvases(shapes_demo: tuple[torch.nn.Module, np.ndarray]) -> None:
    model, images = shapes_demo
    expected = reference_outputs(model, images)
    assert (expected["num_detections"] >= 3).all(), "shapes-demo should find shapes in every val image"
    assert_identical(deploy_outputs(model, images), expected)


def test_deploy_outputs_of_images_at_their_own_sizes(shapes_demo: tuple[torch.nn.Module, np.ndarray]) -> None:
    """Wide, tall, whole and small images inside the 128x128 canvas, each run alone at its own size."""
    model, images = shapes_demo
    sizes = np.array([[96, 128], [128, 96], [128, 128], [64, 100]], np.int32)
    expected = reference_outputs(model, images, sizes)
    assert expected["num_detections"].sum() > 0
    assert_identical(deploy_outputs(model, images, sizes), expected)


def test_deploy_outputs_with_nothing_detected(shapes_demo: tuple[torch.nn.Module, np.ndarray]) -> None:
    """Zero rows everywhere, with the masks still M×M (28×28 for torchvision's mask predictor)."""
    model, images = shapes_demo
    thresh = model.roi_heads.score_thresh
    model.roi_heads.score_thresh = 1.0
    try:
        expected = reference_outputs(model, images[:2])
        assert not expected["num_detections"].any() and expected["masks"].shape == (2, 100, 28, 28)
        assert_identical(deploy_outputs(model, images[:2]), expected)
    finally:
        model.roi_heads.score_thresh = thresh


def test_keep_input_size_keeps_the_input_size(shapes_demo: tuple[torch.nn.Module, np.ndarray]) -> None:
    """shapes-demo's transform scales a 64×100 image up to 128 rows; set by keep_input_size, it leaves it alone."""
    model, images = shapes_demo
    transform = model.transform
    settings = (transform.min_size, transform.max_size)
    image = torch.from_numpy(images[0, :, :64, :100]) / 255
    try:
        assert transform([image])[0].image_sizes != [(64, 100)]
        keep_input_size(model, 64, 100)
        assert transform([image])[0].image_sizes == [(64, 100)]
    finally:
        transform.min_size, transform.max_size = settings
