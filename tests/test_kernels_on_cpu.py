"""The CUDA sources of both plugins, run on CPU threads (tests/kernels_on_cpu) with the launch code TensorRT uses,
against torchvision's CPU ops. This checks the kernels' logic and their argument passing on every CI run; the GPU
itself is covered by test_plugins_gpu.py."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from maskrt.plugins import launch, torch_kernels
from maskrt.plugins.contracts import BatchedNMSAttrs, MultilevelRoIAlignAttrs
from plugin_cases import (
    adversarial_rois,
    check_nms_outputs,
    fpn_features,
    integer_boxes,
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


@pytest.mark.parametrize(
    "case",
    ["rpn", "detection", "agnostic", "ties", "all-suppressed", "nothing-passes", "iou-at-threshold"],
)
def test_nms_matches_torchvision(run_on_cpu: torch_kernels.Runner, case: str) -> None:
    generator = torch.Generator().manual_seed(len(case))
    if case == "rpn":  # proposals of 5 FPN levels as classes: each row scores in its own level only
        attrs = BatchedNMSAttrs(iou_threshold=0.7, score_threshold=0.0, max_output=150)
        boxes = integer_boxes((2, 400), generator)
        scores = torch.zeros(2, 400, 5)
        scores.scatter_(2, torch.randint(0, 5, (2, 400, 1), generator=generator), torch.rand(2, 400, 1, generator=generator) + 0.01)
    elif case == "detection":  # per-class boxes, background class 0
        attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.05, max_output=40, background_class=0)
        boxes = integer_boxes((1, 120, 9), generator, extent=200)
        scores = torch.rand(1, 120, 9, generator=generator) ** 3
    elif case == "agnostic":
        attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.1, max_output=500, class_agnostic=1)
        boxes = integer_boxes((2, 200), generator)
        scores = torch.rand(2, 200, 3, generator=generator)
    elif case == "ties":  # a few score values only, overlapping boxes: the order decides what is kept
        attrs = BatchedNMSAttrs(iou_threshold=0.3, score_threshold=0.0, max_output=60)
        boxes = integer_boxes((1, 150), generator, extent=150)
        scores = torch.randint(1, 4, (1, 150, 2), generator=generator).float() / 4
    elif case == "all-suppressed":  # one box repeated: one survivor per class
        attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.0, max_output=10)
        boxes = torch.tensor([10.0, 10.0, 50.0, 50.0]).repeat(1, 64, 1)
        scores = torch.rand(1, 64, 3, generator=generator) + 0.01
    elif case == "iou-at-threshold":  # IoU exactly 0.5 is kept, 0.6 is not; two equal points (IoU 0/0) are kept
        attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.0, max_output=8)
        boxes = torch.tensor([[[0.0, 0, 30, 10], [10, 0, 40, 10], [100, 100, 140, 110], [110, 100, 150, 110],
                               [200, 200, 200, 200], [200, 200, 200, 200]]])
        scores = torch.tensor([[[0.9], [0.8], [0.7], [0.6], [0.5], [0.4]]])
    else:
        attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.9, max_output=5)
        boxes = integer_boxes((2, 30), generator)
        scores = torch.rand(2, 30, 4, generator=generator) * 0.9
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
