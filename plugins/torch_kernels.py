"""The plugin kernels on torch tensors, through the launch code TensorRT's enqueue uses: for the benchmark and tests.

Inputs are contiguous tensors on one device; outputs are allocated beside them. `run` executes the launches: by
default with cuda-python on torch's current CUDA stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from maskrt.contracts.plugins import BatchedNMSAttrs, MultilevelRoIAlignAttrs
from maskrt.plugins import launch

Runner = Callable[[Sequence[launch.Launch]], None]


def run_on_current_stream(launches: Sequence[launch.Launch]) -> None:
    launch.run(launches, torch.cuda.current_stream().cuda_stream)


def multilevel_roi_align(
    attrs: MultilevelRoIAlignAttrs, rois: torch.Tensor, features: Sequence[torch.Tensor], run: Runner = run_on_current_stream
) -> torch.Tensor:
    """rois [B,R,4] float32, features [B,C,H,W] per level (float32 or float16) → [B,R,C,S,S] in the features' dtype."""
    rois, features = rois.contiguous(), [f.contiguous() for f in features]
    batch, num_rois, _ = rois.shape
    channels = features[0].shape[1]
    output = torch.empty(
        (batch, num_rois, channels, attrs.output_size, attrs.output_size), dtype=features[0].dtype, device=rois.device
    )
    run(
        launch.roi_align_launches(
            attrs,
            rois.data_ptr(),
            [f.data_ptr() for f in features],
            output.data_ptr(),
            batch=batch,
            num_rois=num_rois,
            channels=channels,
            feature_sizes=[(f.shape[2], f.shape[3]) for f in features],
            half=features[0].dtype == torch.float16,
        )
    )
    return output


def batched_nms(
    attrs: BatchedNMSAttrs, boxes: torch.Tensor, scores: torch.Tensor, run: Runner = run_on_current_stream
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """boxes [B,N,4] or [B,N,C,4], scores [B,N,C] → num [B,1], boxes [B,K,4], scores [B,K], classes [B,K], indices [B,K]."""
    boxes, scores = boxes.contiguous(), scores.contiguous()
    batch, num_boxes, num_classes = scores.shape
    k, device = attrs.max_output, scores.device
    outputs = (
        torch.empty((batch, 1), dtype=torch.int32, device=device),
        torch.empty((batch, k, 4), dtype=torch.float32, device=device),
        torch.empty((batch, k), dtype=torch.float32, device=device),
        torch.empty((batch, k), dtype=torch.int32, device=device),
        torch.empty((batch, k), dtype=torch.int32, device=device),
    )
    workspace = torch.empty(launch.nms_workspace(attrs, batch, num_boxes, num_classes).size, dtype=torch.uint8, device=device)
    run(
        launch.nms_launches(
            attrs,
            boxes.data_ptr(),
            scores.data_ptr(),
            [o.data_ptr() for o in outputs],
            workspace.data_ptr(),
            batch=batch,
            num_boxes=num_boxes,
            num_classes=num_classes,
            boxes_per_class=boxes.dim() == 4,
        )
    )
    return outputs
