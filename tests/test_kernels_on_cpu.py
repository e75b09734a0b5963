"""The CUDA sources of both plugins and of the GPU mask paste, run on CPU threads (tests/kernels_on_cpu) with the launch code TensorRT uses,
against torchvision's CPU ops. This checks the kernels' logic and their argument passing on every CI run; the GPU
itself is covered by test_plugins_gpu.py."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from maskrt.plugins import launch, torch_kernels
from maskrt.runtime import gpu_paste
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

HARNESS = Path(__file__).resolve().parent / "kernels_on_cpu"
KERNELS = Path(__file__).resolve().parents[1] / "plugins" / "kernels"
IMAGE = (128, 192)


@pytest.fixture(scope="module")
def run_on_cpu(tmp_path_factory: pytest.TempPathFactory) -> torch_kernels.Runner:
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is needed to build the CPU harness")
    library = tmp_path_factory.mktemp("harness") / "launch_on_cpu.so"
    subprocess.run(
        [compiler, "-std=c++20", "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-pthread", "-x", "c++",
         "-I", str(KERNELS), str(HARNESS / "launch_on_cpu.cpp"), "-o", str(library)],
        check=True,
    )
    harness = ctypes.CDLL(str(library))
    harness.maskrt_cpu_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p]

    def run(launches: Sequence[launch.Launch]) -> None:
        for item in launches:
            pointers = (ctypes.c_void_p * len(item.args))(*[ctypes.addressof(arg) for arg in item.args])
            status = harness.maskrt_cpu_launch(item.kernel.encode(), item.grid[0], item.grid[1], item.block, pointers)
            assert status == 0, f"the harness does not know {item.kernel}"

    return run


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
