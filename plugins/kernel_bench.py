"""python -m maskrt.plugins.kernel_bench: the plugin kernels against the torchvision CUDA ops that do the same job, on
Mask R-CNN-sized work (800x1344 input, 256 channels), side by side in one run.

Each function is timed with CUDA events around every call on the current stream, after a warm-up, and the median is
reported, so both sides pay what a caller pays: launches, host synchronisations and the GPU work. Exits with 2
without a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torchvision
from rich.console import Console
from rich.table import Table
from torchvision.ops import MultiScaleRoIAlign, batched_nms

from maskrt.contracts.plugins import BatchedNMSAttrs, MultilevelRoIAlignAttrs
from maskrt.plugins import torch_kernels

IMAGE = (800, 1344)
CHANNELS = 256


def median_ms(function: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def random_boxes(count: int, generator: torch.Generator, leading: tuple[int, ...] = ()) -> torch.Tensor:
    """Boxes of 5 to 400 pixels over the image, with integer corners: torchvision's batched_nms offsets boxes by
    class, which rounds fractional corners, and the agreement column should compare NMS, not that rounding."""
    corner = torch.rand(*leading, count, 2, generator=generator) * torch.tensor([IMAGE[1], IMAGE[0]])
    size = torch.exp(torch.rand(*leading, count, 2, generator=generator) * 6) + 4
    return torch.cat([corner, corner + size], dim=-1).round()


def roi_align_work(num_rois: int, output_size: int, generator: torch.Generator) -> tuple[str, Callable[[], object], Callable[[], object], str]:
    attrs = MultilevelRoIAlignAttrs(output_size=output_size, sampling_ratio=2, aligned=0)
    features = [torch.randn(1, CHANNELS, IMAGE[0] >> l, IMAGE[1] >> l, generator=generator).cuda() for l in range(2, 6)]
    rois = random_boxes(num_rois, generator, (1,)).cuda()
    names = ["p2", "p3", "p4", "p5"]
    pooler = MultiScaleRoIAlign(names, output_size, 2)
    feature_dict = OrderedDict(zip(names, features))
    difference = (torch_kernels.multilevel_roi_align(attrs, rois, features)[0] - pooler(feature_dict, [rois[0]], [IMAGE])).abs().max()
    return (
        f"MultilevelRoIAlign P2-P5, {num_rois} RoIs, {CHANNELS} ch, {output_size}x{output_size}, FP32",
        lambda: pooler(feature_dict, [rois[0]], [IMAGE]),
        lambda: torch_kernels.multilevel_roi_align(attrs, rois, features),
        f"max |diff| {difference.item():.1e}",
    )


def nms_work(
    name: str, attrs: BatchedNMSAttrs, boxes: torch.Tensor, scores: torch.Tensor
) -> tuple[str, Callable[[], object], Callable[[], object], str]:
    """torchvision's side does what the plugin does: threshold the (n, c) candidates, batched_nms, keep K."""
    num_boxes, num_classes = scores.shape[1:]
    index = torch.arange(num_boxes * num_classes, device="cuda")
    rows, classes = index // num_classes, index % num_classes
    flat_boxes = boxes[0][rows, classes] if boxes.dim() == 4 else boxes[0][rows]

    def torchvision_side() -> torch.Tensor:
        flat = scores[0].reshape(-1)
        chosen = torch.where((flat > attrs.score_threshold) & (classes != attrs.background_class))[0]
        keep = batched_nms(flat_boxes[chosen], flat[chosen], classes[chosen], attrs.iou_threshold)[: attrs.max_output]
        return index[chosen][keep]

    outputs = torch_kernels.batched_nms(attrs, boxes, scores)
    count = int(outputs[0][0, 0])
    ours = outputs[4][0, :count].long() * num_classes + outputs[3][0, :count].long()
    theirs = torchvision_side()
    same = set(ours.tolist()) == set(theirs.tolist())
    return name, torchvision_side, lambda: torch_kernels.batched_nms(attrs, boxes, scores), f"kept sets {'equal' if same else 'DIFFER'} ({count})"


def workloads(generator: torch.Generator) -> list[tuple[str, Callable[[], object], Callable[[], object], str]]:
    proposals = 4700
    level_scores = torch.zeros(1, proposals, 5)
    level_scores.scatter_(2, torch.randint(0, 5, (1, proposals, 1), generator=generator), torch.rand(1, proposals, 1, generator=generator) + 0.01)
    rpn = BatchedNMSAttrs(iou_threshold=0.7, score_threshold=0.0, max_output=1000)
    logits = torch.randn(1, 1000, 91, generator=generator) * 3
    detection = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.05, max_output=100, background_class=0)
    return [
        roi_align_work(1000, 7, generator),
        roi_align_work(100, 14, generator),
        nms_work(f"BatchedNMS RPN, {proposals} proposals over 5 levels, K=1000", rpn, random_boxes(proposals, generator, (1,)).cuda(), level_scores.cuda()),
        nms_work(
            "BatchedNMS detection, 1000 RoIs x 91 classes, per-class boxes, K=100",
            detection,
            random_boxes(91, generator, (1, 1000)).cuda(),
            logits.softmax(dim=2).cuda(),
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskrt.plugins.kernel_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    console = Console(highlight=False)
    if not torch.cuda.is_available():
        Console(stderr=True).print("maskrt.plugins.kernel_bench: no CUDA GPU found; the benchmark needs an NVIDIA GPU")
        return 2
    generator = torch.Generator().manual_seed(0)
    table = Table(title=f"{torch.cuda.get_device_name()} — torch {torch.__version__}, torchvision {torchvision.__version__}")
    for column in ("work", "torchvision ms", "maskrt ms", "speed-up", "agreement"):
        table.add_column(column, justify="left" if column in ("work", "agreement") else "right")
    Console(stderr=True).print(f"timing each workload: {args.warmup} warm-up calls, then {args.repeats} timed")
    for name, theirs, ours, agreement in workloads(generator):
        theirs_ms = median_ms(theirs, args.warmup, args.repeats)
        ours_ms = median_ms(ours, args.warmup, args.repeats)
        table.add_row(name, f"{theirs_ms:.3f}", f"{ours_ms:.3f}", f"{theirs_ms / ours_ms:.1f}x", agreement)
    console.print(table)
    console.print(f"medians of {args.repeats} calls after {args.warmup} warm-up calls, CUDA events on the current stream")
    return 0


if __name__ == "__main__":
    sys.exit(main())
