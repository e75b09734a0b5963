"""The plugin kernels on a GPU (launched with cuda-python as TensorRT's enqueue does) against torchvision's CUDA ops."""

from __future__ import annotations

import pytest
import torch

from maskrt.plugins import torch_kernels
from maskrt.contracts.plugins import MultilevelRoIAlignAttrs
from plugin_cases import (
    BIG_NMS_CASES,
    NMS_CASES,
    adversarial_rois,
    check_nms_outputs,
    fpn_features,
    nms_case,
    random_rois,
    torchvision_roi_align,
)

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs an NVIDIA GPU with CUDA", allow_module_level=True)
pytest.importorskip("cuda.bindings.driver", reason="needs cuda-python: pip install 'maskrt[tensorrt]'")

IMAGE = (256, 384)


@pytest.mark.parametrize(
    "attrs",
    [
        MultilevelRoIAlignAttrs(output_size=7, sampling_ratio=2, aligned=0),
        MultilevelRoIAlignAttrs(output_size=14, sampling_ratio=2, aligned=0),
        MultilevelRoIAlignAttrs(output_size=5, sampling_ratio=0, aligned=1),
        MultilevelRoIAlignAttrs(output_size=4, sampling_ratio=1, aligned=0, min_level=3, max_level=3),
    ],
    ids=["box-head", "mask-head", "aligned-adaptive", "one-level"],
)
def test_roi_align_matches_torchvision_cuda(attrs: MultilevelRoIAlignAttrs) -> None:
    generator = torch.Generator().manual_seed(attrs.output_size)
    features = [f.cuda() for f in fpn_features(attrs, batch=2, channels=32, image=IMAGE, generator=generator)]
    rois = random_rois(2, 300, IMAGE, generator)
    rois[1, : adversarial_rois(IMAGE).shape[1]] = adversarial_rois(IMAGE)[0]
    rois = rois.cuda()
    got = torch_kernels.multilevel_roi_align(attrs, rois, features)
    want = torchvision_roi_align(attrs, rois, features, IMAGE)
    assert (got - want).abs().max().item() <= 1e-5


def test_roi_align_fp16_features() -> None:
    attrs = MultilevelRoIAlignAttrs(output_size=7, sampling_ratio=2, aligned=0)
    generator = torch.Generator().manual_seed(16)
    features = [f.half().cuda() for f in fpn_features(attrs, batch=2, channels=16, image=IMAGE, generator=generator)]
    rois = random_rois(2, 200, IMAGE, generator).cuda()
    got = torch_kernels.multilevel_roi_align(attrs, rois, features)
    assert got.dtype == torch.float16
    # FP32 accumulation: torchvision on the same FP16 values in FP32, up to the final rounding to FP16.
    want = torchvision_roi_align(attrs, rois, [f.float() for f in features], IMAGE)
    torch.testing.assert_close(got.float(), want, atol=1e-3, rtol=1e-3)


def test_roi_align_empty() -> None:
    attrs = MultilevelRoIAlignAttrs(output_size=7, sampling_ratio=2, aligned=0)
    features = [f.cuda() for f in fpn_features(attrs, 1, 8, IMAGE, torch.Generator().manual_seed(0))]
    assert torch_kernels.multilevel_roi_align(attrs, torch.zeros(1, 0, 4, device="cuda"), features).shape == (1, 0, 8, 7, 7)


@pytest.mark.parametrize("case", NMS_CASES + BIG_NMS_CASES)
def test_nms_matches_torchvision_cuda(case: str) -> None:
    attrs, boxes, scores = nms_case(case, device="cuda")
    outputs = torch_kernels.batched_nms(attrs, boxes, scores)
    torch.cuda.synchronize()
    check_nms_outputs(attrs, boxes, scores, outputs)


def test_nms_with_no_rows() -> None:
    attrs, _, _ = nms_case("rpn")
    num, boxes, scores, classes, indices = torch_kernels.batched_nms(
        attrs, torch.zeros(2, 0, 4, device="cuda"), torch.zeros(2, 0, 5, device="cuda")
    )
    assert num.tolist() == [[0], [0]]
    assert not boxes.any() and not scores.any() and not classes.any() and not indices.any()
