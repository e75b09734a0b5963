"""Launching the plugin kernels on device pointers: the one launch path of TensorRT's enqueue and of the benchmark.

`*_launches` turn a plugin's attributes, shapes and device addresses into the kernels' grids and arguments (plain
Python, no GPU needed); `run` launches them with cuda-python on a CUDA stream, loading the fatbin into the current
CUDA context on first use. The constants below mirror the #defines of plugins/kernels/*.cu.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from maskrt.contracts.errors import BadInput
from maskrt.contracts.plugins import MAX_FEATURE_MAPS, BatchedNMSAttrs, MultilevelRoIAlignAttrs
from maskrt.plugins.cuda import CudaError, check_cuda, loading

ROI_ALIGN_THREADS = 256
NMS_THREADS = 512  # NMS_THREADS in batched_nms.cu; the kernel assumes exactly this block size
MERGE_THREADS = 256  # MERGE_THREADS in batched_nms.cu
MAX_GRID_Y = 65535
ALIGNMENT = 256  # of each workspace region
KERNELS = (
    "maskrt_multilevel_roi_align_f32",
    "maskrt_multilevel_roi_align_f16",
    "maskrt_batched_nms_segments",
    "maskrt_batched_nms_merge",
    "maskrt_paste_masks",  # maskrt.runtime.gpu_paste
)


class FeatureLevels(ctypes.Structure):
    """struct FeatureLevels of multilevel_roi_align.cu, passed by value; its MASKRT_MAX_LEVELS is MAX_FEATURE_MAPS."""

    _fields_ = [
        ("data", ctypes.c_void_p * MAX_FEATURE_MAPS),
        ("height", ctypes.c_int * MAX_FEATURE_MAPS),
        ("width", ctypes.c_int * MAX_FEATURE_MAPS),
    ]


Argument = Union[ctypes.c_void_p, ctypes.c_int, ctypes.c_float, FeatureLevels]


@dataclass(frozen=True)
class Launch:
    kernel: str
    grid: tuple[int, int]
    block: int
    args: tuple[Argument, ...]


def roi_align_launches(
    attrs: MultilevelRoIAlignAttrs,
    rois: int,
    features: Sequence[int],
    output: int,
    *,
    batch: int,
    num_rois: int,
    channels: int,
    feature_sizes: Sequence[tuple[int, int]],
    half: bool,
) -> list[Launch]:
    """rois [B,R,4] float32, features[i] [B,C,H_i,W_i] for level min_level + i, output [B,R,C,S,S]."""
    if len(features) != attrs.num_levels or len(feature_sizes) != attrs.num_levels:
        raise BadInput(f"expected {attrs.num_levels} feature maps, got {len(features)}")
    outputs_per_roi = channels * attrs.output_size**2
    if batch * num_rois == 0 or outputs_per_roi == 0:
        return []
    levels = FeatureLevels()
    for i, (address, (height, width)) in enumerate(zip(features, feature_sizes)):
        levels.data[i] = address
        levels.height[i] = height
        levels.width[i] = width
    chunks = min(-(-outputs_per_roi // ROI_ALIGN_THREADS), MAX_GRID_Y)
    args: tuple[Argument, ...] = (
        ctypes.c_void_p(rois),
        levels,
        ctypes.c_void_p(output),
        ctypes.c_int(num_rois),
        ctypes.c_int(channels),
        ctypes.c_int(attrs.output_size),
        ctypes.c_int(attrs.sampling_ratio),
        ctypes.c_int(attrs.aligned),
        ctypes.c_float(attrs.canonical_scale),
        ctypes.c_int(attrs.canonical_level),
        ctypes.c_int(attrs.min_level),
        ctypes.c_int(attrs.num_levels),
        ctypes.c_float(attrs.eps),
    )
    kernel = "maskrt_multilevel_roi_align_f16" if half else "maskrt_multilevel_roi_align_f32"
    return [Launch(kernel, (batch * num_rois, chunks), ROI_ALIGN_THREADS, args)]


@dataclass(frozen=True)
class NMSWorkspace:
    """Byte offsets of the NMS workspace regions, and its size."""

    candidates: int  # B * N * C sort keys (uint64)
    kept: int  # B * segments * K sort keys (uint64)
    kept_count: int  # B * segments int32
    size: int


def nms_workspace(attrs: BatchedNMSAttrs, batch: int, num_boxes: int, num_classes: int) -> NMSWorkspace:
    segments = 1 if attrs.class_agnostic else num_classes
    candidates = 0
    kept = _aligned(candidates + 8 * batch * num_boxes * num_classes)
    kept_count = _aligned(kept + 8 * batch * segments * attrs.max_output)
    return NMSWorkspace(candidates, kept, kept_count, _aligned(kept_count + 4 * batch * segments))


def nms_launches(
    attrs: BatchedNMSAttrs,
    boxes: int,
    scores: int,
    outputs: Sequence[int],
    workspace: int,
    *,
    batch: int,
    num_boxes: int,
    num_classes: int,
    boxes_per_class: bool,
) -> list[Launch]:
    """boxes [B,N,4] or [B,N,C,4] (boxes_per_class), scores [B,N,C], both float32; outputs: the addresses of num [B,1],
    boxes [B,K,4], scores [B,K], classes [B,K] and indices [B,K]; workspace: nms_workspace(...).size bytes."""
    if num_boxes * num_classes >= 2**31:
        raise BadInput(f"BatchedNMS handles fewer than 2^31 candidates per image, got {num_boxes} x {num_classes}")
    if batch == 0:
        return []
    layout = nms_workspace(attrs, batch, num_boxes, num_classes)
    segments = max(1 if attrs.class_agnostic else num_classes, 1)
    shape = (ctypes.c_int(num_boxes), ctypes.c_int(num_classes), ctypes.c_int(attrs.class_agnostic))
    kept = ctypes.c_void_p(workspace + layout.kept)
    kept_count = ctypes.c_void_p(workspace + layout.kept_count)
    select: tuple[Argument, ...] = (
        ctypes.c_void_p(boxes),
        ctypes.c_void_p(scores),
        ctypes.c_int(int(boxes_per_class)),
        *shape,
        ctypes.c_int(attrs.background_class),
        ctypes.c_float(attrs.score_threshold),
        ctypes.c_float(attrs.iou_threshold),
        ctypes.c_int(attrs.max_output),
        ctypes.c_void_p(workspace + layout.candidates),
        kept,
        kept_count,
    )
    merge: tuple[Argument, ...] = (
        ctypes.c_void_p(boxes),
        ctypes.c_void_p(scores),
        ctypes.c_int(int(boxes_per_class)),
        *shape,
        ctypes.c_int(attrs.max_output),
        kept,
        kept_count,
        *(ctypes.c_void_p(address) for address in outputs),
    )
    return [
        Launch("maskrt_batched_nms_segments", (segments, batch), NMS_THREADS, select),
        Launch("maskrt_batched_nms_merge", (segments, batch), MERGE_THREADS, merge),
    ]


def run(launches: Sequence[Launch], stream: int) -> None:
    """Launch on `stream` (a cudaStream_t as an integer) in the current CUDA context."""
    from cuda.bindings import driver

    functions = load_kernels()
    handle = driver.CUstream(stream)
    for launch in launches:
        pointers = (ctypes.c_void_p * len(launch.args))(*[ctypes.addressof(arg) for arg in launch.args])
        check_cuda(
            driver.cuLaunchKernel(
                functions[launch.kernel],
                launch.grid[0],
                launch.grid[1],
                1,
                launch.block,
                1,
                1,
                0,
                handle,
                ctypes.addressof(pointers),
                0,
            ),
            f"launching {launch.kernel}",
        )


_functions_by_context: dict[int, dict[str, Any]] = {}


def load_kernels() -> dict[str, Any]:
    """The kernels loaded into the current CUDA context (TensorRT's or torch's), loading them once per context: the
    install-time or cached fatbin from nvcc, or NVRTC's CUBIN for the context's GPU (plugins/kernel_build.py)."""
    from cuda.bindings import driver

    from maskrt.plugins.kernel_build import build_fatbin

    _init_driver()
    context = int(check_cuda(driver.cuCtxGetCurrent(), "reading the current CUDA context"))
    if context == 0:
        raise CudaError("maskrt's kernels need a current CUDA context (create one with TensorRT, torch or pycuda)")
    if context not in _functions_by_context:
        architecture = context_architecture()
        image = build_fatbin(architecture=architecture)
        module = check_cuda(
            driver.cuModuleLoadData(image.read_bytes()),
            f"loading maskrt's kernels ({image.name}) for sm_{architecture} with the CUDA {driver_version()} driver",
        )
        _functions_by_context[context] = {
            name: check_cuda(driver.cuModuleGetFunction(module, name.encode()), f"finding {name}") for name in KERNELS
        }
    return _functions_by_context[context]


def context_architecture() -> int:
    """The compute capability of the current context's GPU, as 87 for sm_87."""
    from cuda.bindings import driver

    device = check_cuda(driver.cuCtxGetDevice(), "reading the current context's GPU")
    attribute = driver.CUdevice_attribute
    major = check_cuda(
        driver.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device), "reading the GPU's compute capability"
    )
    minor = check_cuda(
        driver.cuDeviceGetAttribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device), "reading the GPU's compute capability"
    )
    return int(major) * 10 + int(minor)


def driver_version() -> str:
    """The CUDA version the installed driver supports, "12.2" for 12020."""
    from cuda.bindings import driver

    version = int(check_cuda(driver.cuDriverGetVersion(), "reading the CUDA driver's version"))
    return f"{version // 1000}.{version % 1000 // 10}"


@functools.lru_cache(maxsize=None)
def _init_driver() -> None:
    """cuInit, once per process (a failed one is tried again: lru_cache keeps results, not exceptions)."""
    from cuda.bindings import driver

    with loading("the NVIDIA driver library (libcuda)", "maskrt's kernels need an NVIDIA GPU and its driver"):
        result = driver.cuInit(0)
    check_cuda(result, "initialising CUDA")


def _aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT
