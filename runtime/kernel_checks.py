"""`maskrt doctor`'s proof that the CUDA kernels answer as the CPU does on this GPU: both plugins' kernels against the
CPU reference (maskrt.plugins.reference) on random and adversarial cases, and the GPU mask paste
(maskrt.runtime.gpu_paste) against the CPU paste (maskrt.runtime.postprocess).

The cases are drawn as the test suite draws its own (RoIs of every size, some off the image or inside out; NMS with
integer boxes, so that every IoU is exact and any correct NMS agrees bit for bit; masks as a mask head gives them, on
boxes that touch every edge), with NumPy, so that they run where PyTorch is not installed. A `Device` holds the
buffers and runs the launches: on the GPU with pycuda and cuda-python (`gpu_device`), and anything else that can run
a launch on memory it hands out by address.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from maskrt.contracts.plugins import BatchedNMSAttrs, MultilevelRoIAlignAttrs
from maskrt.plugins import launch, reference
from maskrt.runtime.postprocess import paste_masks

if TYPE_CHECKING:
    import pycuda.driver as cuda

    from maskrt.runtime.gpu_paste import GpuPaste


class Device(Protocol):
    """Memory by address, and a way to run launches on it and to paste masks held in it."""

    def upload(self, array: np.ndarray) -> int: ...

    def download(self, address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray: ...

    def run(self, launches: Sequence[launch.Launch]) -> None: ...

    def paste(self, masks: int, mask_size: int, rows: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """bool [N,h,w]: masks [K,M,M] at `masks`, rows [N] of them, pasted at boxes [N,4] (threshold 0.5)."""


IMAGE = (256, 384)  # (h, w) of the image the RoIs and NMS boxes are drawn for
ROI_ALIGN_TOLERANCE = 1e-4  # the kernel and the reference sum the same products in another order: the last bits move
FP16_TOLERANCE = 2e-3  # FP16 features: both pool in FP32 and round once, so they differ by at most one FP16 step
PASTE_MIN_IOU = 0.999  # per mask, as the GPU tests hold the paste kernel to torchvision's


@dataclass(frozen=True)
class KernelResult:
    """One kernel on one case: whether it answered as the CPU does, and how far apart they were."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class RoIAlignCase:
    name: str
    attrs: MultilevelRoIAlignAttrs
    half: bool = False


ROI_ALIGN_CASES = (
    RoIAlignCase("box head", MultilevelRoIAlignAttrs(output_size=7, sampling_ratio=2, aligned=0)),
    RoIAlignCase("mask head", MultilevelRoIAlignAttrs(output_size=14, sampling_ratio=2, aligned=0)),
    RoIAlignCase("aligned, adaptive sampling", MultilevelRoIAlignAttrs(output_size=5, sampling_ratio=0, aligned=1)),
    RoIAlignCase("one level", MultilevelRoIAlignAttrs(output_size=4, sampling_ratio=1, aligned=0, min_level=3, max_level=3)),
    RoIAlignCase("box head, FP16 features", MultilevelRoIAlignAttrs(output_size=7, sampling_ratio=2, aligned=0), half=True),
)
PASTE_CASES = (((150, 200), 40), ((480, 640), 60))  # (h, w) of the image, and masks pasted into it
NMS_CASES = ("rpn", "detection", "class-agnostic", "ties", "all suppressed", "IoU at the threshold", "nothing passes")


def fpn_features(attrs: MultilevelRoIAlignAttrs, batch: int, channels: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One [B,C,H/2^l,W/2^l] float32 map per level, as an FPN gives them."""
    height, width = IMAGE
    levels = range(attrs.min_level, attrs.max_level + 1)
    return [rng.standard_normal((batch, channels, height >> l, width >> l), dtype=np.float32) for l in levels]


def random_rois(batch: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """[B,R,4] boxes of every size from a few pixels to the whole image, some reaching past its edges."""
    height, width = IMAGE
    corner = rng.random((batch, count, 2), dtype=np.float32) * np.array([width, height], np.float32) - 20
    size = np.exp(rng.random((batch, count, 2), dtype=np.float32) * 6.5) + 0.5
    return np.concatenate([corner, corner + size], axis=2).astype(np.float32)


def adversarial_rois() -> np.ndarray:
    """[R,4]: outside the image, zero-size, inside out, exactly on level boundaries, under a pixel, the last pixel."""
    height, width = IMAGE
    return np.array(
        [
            [-50.0, -40.0, -10.0, -5.0],
            [width + 5.0, height + 5.0, width + 90.0, height + 60.0],
            [-30.0, -30.0, width + 30.0, height + 30.0],
            [10.0, 10.0, 10.0, 10.0],
            [12.0, 12.0, 12.0, 80.0],
            [40.0, 30.0, 20.0, 90.0],
            [40.0, 90.0, 100.0, 30.0],
            [100.0, 90.0, 40.0, 30.0],
            [0.0, 0.0, 224.0, 224.0],
            [0.0, 0.0, 112.0, 112.0],
            [3.0, 5.0, 3.5, 5.25],
            [width - 1.0, height - 1.0, width, height],
        ],
        np.float32,
    )


def integer_boxes(shape: tuple[int, ...], rng: np.random.Generator, extent: int = 600) -> np.ndarray:
    """Boxes with integer corners: every IoU term is exact in float32."""
    corner = rng.integers(-20, extent, (*shape, 2))
    size = rng.integers(0, 160, (*shape, 2))
    return np.concatenate([corner, corner + size], axis=-1).astype(np.float32)


def nms_case(name: str, rng: np.random.Generator) -> tuple[BatchedNMSAttrs, np.ndarray, np.ndarray]:
    """attrs, boxes [B,N,4] or [B,N,C,4] and scores [B,N,C] of a case of NMS_CASES."""
    boxes: np.ndarray
    scores: np.ndarray
    if name == "rpn":  # proposals with their FPN level as class: each row scores in one level
        attrs = BatchedNMSAttrs(iou_threshold=0.7, score_threshold=0.0, max_output=150)
        boxes = integer_boxes((2, 400), rng, extent=1300)
        scores = np.zeros((2, 400, 5), np.float32)
        np.put_along_axis(scores, rng.integers(0, 5, (2, 400, 1)), rng.random((2, 400, 1), dtype=np.float32) + 0.01, axis=2)
    elif name == "detection":  # per-class boxes, background class 0
        attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.05, max_output=40, background_class=0)
        boxes = integer_boxes((1, 120, 9), rng, extent=200)
        scores = rng.random((1, 120, 9), dtype=np.float32) ** 3
    elif name == "class-agnostic":
        attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.1, max_output=500, class_agnostic=1)
        boxes = integer_boxes((2, 200), rng)
        scores = rng.random((2, 200, 3), dtype=np.float32)
    elif name == "ties":  # a few score values, overlapping boxes: the order decides what is kept
        attrs = BatchedNMSAttrs(iou_threshold=0.3, score_threshold=0.0, max_output=60)
        boxes = integer_boxes((1, 150), rng, extent=150)
        scores = rng.integers(1, 4, (1, 150, 2)).astype(np.float32) / 4
    elif name == "all suppressed":  # one box repeated: one survivor per class
        attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.0, max_output=10)
        boxes = np.tile(np.array([10.0, 10.0, 50.0, 50.0], np.float32), (1, 64, 1))
        scores = rng.random((1, 64, 3), dtype=np.float32) + 0.01
    elif name == "IoU at the threshold":  # IoU 0.5 exactly is kept, 0.6 is not; two equal points (0/0) both kept
        attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.0, max_output=8)
        boxes = np.array(
            [[[0, 0, 30, 10], [10, 0, 40, 10], [100, 100, 140, 110], [110, 100, 150, 110], [200, 200, 200, 200], [200, 200, 200, 200]]],
            np.float32,
        )
        scores = np.array([[[0.9], [0.8], [0.7], [0.6], [0.5], [0.4]]], np.float32)
    elif name == "nothing passes":
        attrs = BatchedNMSAttrs(iou_threshold=0.5, score_threshold=0.9, max_output=5)
        boxes = integer_boxes((2, 30), rng)
        scores = rng.random((2, 30, 4), dtype=np.float32) * np.float32(0.9)
    else:
        raise KeyError(name)
    return attrs, boxes, scores.astype(np.float32)


def paste_case(count: int, image_size: tuple[int, int], rng: np.random.Generator, mask_size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """masks [count,M,M] float32 probabilities with smooth blobs (as a mask head gives) and boxes [count,4] in image
    pixels, clipped to the image as Mask R-CNN's are: large, small, at every edge, the whole image, sub-pixel, empty."""
    height, width = image_size
    coarse = rng.standard_normal((count, 7, 7)).astype(np.float32) * 4
    smooth = np.stack([cv2.resize(c, (mask_size, mask_size), interpolation=cv2.INTER_LINEAR) for c in coarse])
    masks: np.ndarray = (1 / (1 + np.exp(-smooth))).astype(np.float32)
    extent = np.array([width, height], np.float32)
    corner = rng.random((count, 2), dtype=np.float32) * 1.2 * extent - 0.2 * extent
    size = rng.random((count, 2), dtype=np.float32) ** 2 * 0.7 * extent
    boxes = np.minimum(np.clip(np.concatenate([corner, corner + size], axis=1), 0, None), np.tile(extent, 2))
    special = np.array(
        [
            [0.0, 0.0, width, height],
            [0.0, 0.0, 15.75, 30.5],
            [width - 12.5, height - 9.0, width, height],
            [width - 0.3, 5.0, width, 40.0],
            [10.2, 10.4, 10.6, 10.7],
            [20.0, 20.0, 20.0, 20.0],
        ],
        np.float32,
    )
    boxes[: min(count, len(special))] = special[: min(count, len(special))]
    return masks, boxes.astype(np.float32)


def check_kernels(device: Device, seed: int = 0) -> list[KernelResult]:
    """Every kernel on every case, against the CPU."""
    rng = np.random.default_rng(seed)
    results = [_check_roi_align(device, case, rng) for case in ROI_ALIGN_CASES]
    results += [_check_nms(device, name, *nms_case(name, rng)) for name in NMS_CASES]
    results += [_check_paste(device, image, count, rng) for image, count in PASTE_CASES]
    return results


def _check_roi_align(device: Device, case: RoIAlignCase, rng: np.random.Generator) -> KernelResult:
    batch, channels = 2, 16
    features = fpn_features(case.attrs, batch, channels, rng)
    if case.half:
        features = [f.astype(np.float16) for f in features]
    rois = random_rois(batch, 300, rng)
    rois[1, : len(adversarial_rois())] = adversarial_rois()
    size = case.attrs.output_size
    shape = (batch, rois.shape[1], channels, size, size)
    output = device.upload(np.full(shape, np.nan, features[0].dtype))
    device.run(
        launch.roi_align_launches(
            case.attrs,
            device.upload(rois),
            [device.upload(f) for f in features],
            output,
            batch=batch,
            num_rois=rois.shape[1],
            channels=channels,
            feature_sizes=[(f.shape[2], f.shape[3]) for f in features],
            half=case.half,
        )
    )
    got = device.download(output, shape, features[0].dtype).astype(np.float32)
    want = reference.multilevel_roi_align(rois, features, case.attrs).astype(np.float32)
    error = float(np.nanmax(np.abs(got - want))) if not np.isnan(got).any() else float("nan")
    tolerance = FP16_TOLERANCE if case.half else ROI_ALIGN_TOLERANCE
    passed = bool(error <= tolerance)  # NaN (an output never written) fails
    detail = f"{rois.shape[1] * batch} RoIs, largest difference {error:.2g} (within {tolerance:g})"
    return KernelResult(f"MultilevelRoIAlign, {case.name}", passed, detail if passed else detail.replace("within", "over"))


def _check_nms(device: Device, name: str, attrs: BatchedNMSAttrs, boxes: np.ndarray, scores: np.ndarray) -> KernelResult:
    batch, num_boxes, num_classes = scores.shape
    want = reference.batched_nms(boxes, scores, attrs)
    # Filled with what no output holds, so that a row the kernel leaves unwritten shows.
    outputs = [device.upload(np.full(array.shape, -7, array.dtype)) for array in want]
    workspace = device.upload(np.zeros(launch.nms_workspace(attrs, batch, num_boxes, num_classes).size, np.uint8))
    device.run(
        launch.nms_launches(
            attrs,
            device.upload(boxes),
            device.upload(scores),
            outputs,
            workspace,
            batch=batch,
            num_boxes=num_boxes,
            num_classes=num_classes,
            boxes_per_class=boxes.ndim == 4,
        )
    )
    got = [device.download(address, array.shape, array.dtype) for address, array in zip(outputs, want)]
    differing = [field for field, mine, theirs in zip(want._fields, got, want) if not np.array_equal(mine, theirs)]
    kept = int(want.num.sum())
    detail = f"{kept} boxes kept of {batch * num_boxes * num_classes} candidates"
    if differing:
        detail += f"; {', '.join(differing)} differ from the CPU's (kernel kept {int(got[0].sum())})"
    return KernelResult(f"BatchedNMS, {name}", not differing, detail)


def _check_paste(device: Device, image_size: tuple[int, int], count: int, rng: np.random.Generator) -> KernelResult:
    masks, boxes = paste_case(count, image_size, rng)
    rows = np.arange(count)[::-1].copy()  # not in the order they lie in: the kernel reads its rows through `rows`
    got = device.paste(device.upload(masks), masks.shape[-1], rows, boxes[rows], image_size)
    want = paste_masks(masks[rows], boxes[rows], image_size)
    union = (got | want).reshape(count, -1).sum(1)
    ious = np.where(union == 0, 1.0, (got & want).reshape(count, -1).sum(1) / np.maximum(union, 1))
    worst = float(ious.min())
    passed = got.shape == want.shape and worst >= PASTE_MIN_IOU
    detail = f"{count} masks into {image_size[1]}x{image_size[0]}: smallest mask IoU {worst:.4f} (at least {PASTE_MIN_IOU})"
    return KernelResult(f"mask paste, {image_size[1]}x{image_size[0]}", passed, detail)


class PycudaDevice:
    """GPU 0 through pycuda (buffers, stream) and cuda-python (launches), in the primary context that TensorRT and
    the runtime's engines use; make it with `gpu_device`."""

    def __init__(self, stream: cuda.Stream) -> None:
        self.stream = stream
        self._allocations: list[cuda.DeviceAllocation] = []
        self._paste: GpuPaste | None = None

    def upload(self, array: np.ndarray) -> int:
        import pycuda.driver as cuda

        array = np.ascontiguousarray(array)
        allocation = cuda.mem_alloc(max(array.nbytes, 1))
        self._allocations.append(allocation)
        if array.nbytes:
            cuda.memcpy_htod(allocation, array)
        return int(allocation)

    def download(self, address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        import pycuda.driver as cuda

        host = np.empty(shape, dtype)
        if host.nbytes:
            cuda.memcpy_dtoh(host, address)
        return host

    def run(self, launches: Sequence[launch.Launch]) -> None:
        launch.run(launches, self.stream.handle)
        self.stream.synchronize()

    def paste(self, masks: int, mask_size: int, rows: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        from maskrt.runtime.gpu_paste import GpuPaste

        if self._paste is None:
            self._paste = GpuPaste(self.stream)
        return self._paste(masks, mask_size, rows, boxes, image_size, 0.5)

    def free(self) -> None:
        if self._paste is not None:
            self._paste.free()
        for allocation in self._allocations:
            allocation.free()
        self._allocations.clear()


@contextlib.contextmanager
def gpu_device() -> Iterator[PycudaDevice]:
    """GPU 0's primary context made current, with a stream, for the duration; everything allocated is freed in it."""
    import pycuda.driver as cuda

    cuda.init()
    context = cuda.Device(0).retain_primary_context()
    context.push()
    device = PycudaDevice(cuda.Stream())
    try:
        yield device
    finally:
        device.free()
        del device
        cuda.Context.pop()
        context.detach()
