"""The CUDA sources of both plugins and of the GPU mask paste, run on CPU threads (tests/kernels_on_cpu) with the launch code TensorRT uses,
against torchvision's CPU ops. This checks the kernels' logic and their argument passing on every CI run; the GPU
itself is covered by test_plugins_gpu.py."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from maskrt.plugins import reference, torch_kernels
from maskrt.runtime import gpu_paste
from cpu_harness import build_harness
from paste_cases import mask_ious, paste_case, torchvision_paste
from maskrt.contracts.plugins import BatchedNMSAttrs, MultilevelRoIAlignAttrs
from plugin_cases import (
    NMS_CASES,
    adversarial_rois,
    check_nms_outputs,
    fpn_features,
    integer_boxes,
    nms_case,
    random_rois,
    torchvision_roi_align,
)

IMAGE = (128, 192)


@pytest.fixture(scope="module")
def run_on_cpu(tmp_path_factory: pytest.TempPathFactory) -> torch_kernels.Runner:
    return build_harness(tmp_path_factory.mktemp("harness"))


@pytest.mark.parametrize(
    "attrs",
    [
        MultilevelRoIAlignAttrs(output_size=7, sampling_ratio=2, aligned=0),
        MultilevelRoIAlignAttrs(output_size=5, sampling_ratio=0, aligned=1),
        MultilevelRoIAlignAttrs(output_size=4, sampling_ratio=1, aligned=0, min_level=3, max_level=3),
    ],
    ids=["stock", "aligned-adaptive", "one-level"],
)
def test_roi_align_matches_torchvision(run_on_cpu: torch_kernels.Runner, attrs: MultilevelRoIAlignAttrs) -> None:
    generator = torch.Generator().manual_seed(attrs.output_size)
    features = fpn_features(attrs, batch=2, channels=3, image=IMAGE, generator=generator)
    rois = random_rois(2, 24, IMAGE, generator)
    rois[1, : len(adversarial_rois(IMAGE)[0])] = adversarial_rois(IMAGE)[0]
    got = torch_kernels.multilevel_roi_align(attrs, rois, features, run=run_on_cpu)
    want = torchvision_roi_align(attrs, rois, features, IMAGE)
    assert (got - want).abs().max() <= 1e-5


def test_adaptive_sampling_finishes_on_rois_no_image_has(run_on_cpu: torch_kernels.Runner) -> None:
    """TensorRT times a plugin on uninitialised inputs, so RoIs can be any float. Adaptive sampling takes ceil(bin
    size) samples per bin: for a RoI of 1e9 pixels 4.5e6 x 4.5e6 per bin (and (int) of a larger ceil saturates to
    2^31 - 1 on the GPU), which no kernel finishes. The kernel visits only the samples that can land on the map,
    which are all that add anything: it finishes at once, agrees with torchvision where torchvision finishes too, and
    with the CPU reference (which finds the same samples) everywhere; non-finite RoIs pool nothing."""
    attrs = MultilevelRoIAlignAttrs(output_size=7, sampling_ratio=0, aligned=0)
    features = fpn_features(attrs, batch=1, channels=2, image=IMAGE, generator=torch.Generator().manual_seed(8))
    inf, nan = float("inf"), float("nan")
    height, width = IMAGE
    rois = torch.tensor([[
        [10.0, 20.0, 90.0, 100.0],  # an ordinary RoI
        [-width * 20.0, -height * 30.0, width * 50.0, height * 40.0],  # bins wider than the map: samples skipped
        [5.0, 7.0, 11.0, height * 100.0],
        [0.0, 0.0, 1e9, 1e9],
        [-1e30, -1e30, 1e30, 1e30],
        [0.0, 0.0, 3e38, 3e38],
        [0.0, 0.0, inf, 50.0],
        [nan, 0.0, 10.0, 10.0],
        [-inf, -inf, inf, inf],
    ]])
    done: list[torch.Tensor] = []
    worker = threading.Thread(
        target=lambda: done.append(torch_kernels.multilevel_roi_align(attrs, rois, features, run=run_on_cpu)), daemon=True
    )
    worker.start()
    worker.join(timeout=60)
    assert done, "the kernel did not finish on RoIs larger than any image: it visits every sample of a huge grid"
    got = done[0]
    assert torch.isfinite(got).all() and not got[0, 6:].any()  # inf and NaN RoIs pool nothing
    assert got[0, 1].abs().sum() > 0 and got[0, 2].abs().sum() > 0
    want = reference.multilevel_roi_align(rois.numpy(), [f.numpy() for f in features], attrs)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)
    torchvision = torchvision_roi_align(attrs, rois[:, :3], features, IMAGE)
    assert (got[:, :3] - torchvision).abs().max() <= 1e-5


def test_roi_align_fp16_features_accumulate_in_fp32(run_on_cpu: torch_kernels.Runner) -> None:
    attrs = MultilevelRoIAlignAttrs(output_size=7, sampling_ratio=2, aligned=0)
    generator = torch.Generator().manual_seed(16)
    features = [f.half() for f in fpn_features(attrs, batch=1, channels=4, image=IMAGE, generator=generator)]
    rois = random_rois(1, 16, IMAGE, generator)
    got = torch_kernels.multilevel_roi_align(attrs, rois, features, run=run_on_cpu)
    want = torchvision_roi_align(attrs, rois, [f.float() for f in features], IMAGE)
    assert got.dtype == torch.float16
    assert torch.equal(got, want.half())


@pytest.mark.parametrize("case", NMS_CASES)
def test_nms_matches_torchvision(run_on_cpu: torch_kernels.Runner, case: str) -> None:
    attrs, boxes, scores = nms_case(case)
    outputs = torch_kernels.batched_nms(attrs, boxes, scores, run=run_on_cpu)
    check_nms_outputs(attrs, boxes, scores, outputs)
    if case == "nothing-passes":
        assert not outputs[0].any()
    if case == "iou-at-threshold":
        assert outputs[4][0, : int(outputs[0][0, 0])].tolist() == [0, 1, 2, 4, 5]


def test_nms_segment_larger_than_shared_memory(run_on_cpu: torch_kernels.Runner) -> None:
    """One class with more candidates than NMS_SORT_SMEM sorts in the workspace."""
    generator = torch.Generator().manual_seed(5000)
    attrs = BatchedNMSAttrs(iou_threshold=0.6, score_threshold=0.0, max_output=1000)
    boxes = integer_boxes((1, 5000), generator, extent=1300)
    scores = torch.rand(1, 5000, 1, generator=generator) + 0.01
    check_nms_outputs(attrs, boxes, scores, torch_kernels.batched_nms(attrs, boxes, scores, run=run_on_cpu))


def test_nms_with_no_rows(run_on_cpu: torch_kernels.Runner) -> None:
    attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.0, max_output=3)
    num, boxes, scores, classes, indices = torch_kernels.batched_nms(attrs, torch.zeros(2, 0, 4), torch.zeros(2, 0, 3), run=run_on_cpu)
    assert num.tolist() == [[0], [0]]
    assert not boxes.any() and not scores.any() and not classes.any() and not indices.any()


def test_paste_masks_matches_torchvision(run_on_cpu: torch_kernels.Runner) -> None:
    """The runtime's GPU paste kernel (maskrt.runtime.gpu_paste) against paste_masks_in_image, through the launch
    the GPU gets: boxes inside, across every edge, sub-pixel, empty and outside; a subset of rows, out of order."""
    image = (61, 83)
    masks, boxes = paste_case(24, image, seed=3)
    rows = np.array([5, 0, 23, 1, 2, 3, 4, 6, 17, 11, 9], np.int32)
    picked = np.ascontiguousarray(boxes[rows])
    output = np.full((len(rows), *image), 7, np.uint8)  # every pixel must be written
    run_on_cpu(
        gpu_paste.paste_launch(
            masks.ctypes.data, rows.ctypes.data, picked.ctypes.data, output.ctypes.data,
            count=len(rows), mask_size=28, image_size=image, threshold=0.5,
        )
    )
    assert set(np.unique(output)) <= {0, 1}
    want = torchvision_paste(masks[rows], picked, image)
    assert want[:3].any()  # the cases paste something
    assert mask_ious(output.astype(bool), want).min() >= 0.999
