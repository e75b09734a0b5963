"""Mask pasting on the GPU: what maskrt.runtime.postprocess.paste_masks does on the CPU (torchvision's
paste_masks_in_image, then > threshold), read straight from the engine's masks output, so that the M×M probabilities
of a TensorRT run never travel through the host.

The kernel (plugins/kernels/paste_masks.cu) is compiled with the plugins' kernels into one fatbin (plugins/kernel_build.py:
nvcc at install time, else NVRTC from cuda-python at first use, cached per user) and launched with cuda-python on
pycuda's stream, in the primary context that TensorRT and pycuda share. `paste_launch` is plain Python, so the same
launch runs on the CPU harness of the test suite.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import numpy as np

from maskrt.contracts.errors import BadInput
from maskrt.plugins import launch

if TYPE_CHECKING:
    import pycuda.driver as cuda

PASTE_THREADS = 256  # PASTE_THREADS in paste_masks.cu
MAX_GRID_Y = 65535  # rows pasted by one launch: one block row each


def paste_launch(
    masks: int,
    rows: int,
    boxes: int,
    output: int,
    *,
    count: int,
    mask_size: int,
    image_size: tuple[int, int],
    threshold: float,
) -> list[launch.Launch]:
    """Device addresses: masks [K,M,M] float32, rows [count] int32 (which of the K), boxes [count,4] float32 x1,y1,x2,y2
    in the output image's pixels, output [count,h,w] uint8 (0 or 1)."""
    height, width = image_size
    if count == 0 or height * width == 0:
        return []
    if count > MAX_GRID_Y:
        raise BadInput(f"at most {MAX_GRID_Y} masks are pasted at once, got {count}")
    # torchvision pads each mask by one pixel on every side and widens its box by as much.
    expand = np.float32((mask_size + 2) / mask_size)
    args: tuple[launch.Argument, ...] = (
        ctypes.c_void_p(masks),
        ctypes.c_void_p(rows),
        ctypes.c_void_p(boxes),
        ctypes.c_int(mask_size),
        ctypes.c_float(float(expand)),
        ctypes.c_int(height),
        ctypes.c_int(width),
        ctypes.c_float(threshold),
        ctypes.c_void_p(output),
    )
    blocks = -(-height * width // PASTE_THREADS)
    return [launch.Launch("maskrt_paste_masks", (blocks, count), PASTE_THREADS, args)]


class GpuPaste:
    """Pastes masks that are on the GPU into bool [N,h,w] host arrays; buffers grow to the largest request and stay.

    Call it with the primary context current (TensorRTBackend does)."""

    def __init__(self, stream: cuda.Stream) -> None:
        self.stream = stream
        self._device: dict[str, tuple[cuda.DeviceAllocation, int]] = {}
        self._host = np.empty(0, np.uint8)

    def __call__(
        self, masks: int, mask_size: int, rows: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int], threshold: float
    ) -> np.ndarray:
        """masks: device address of [K,M,M] float32; rows [N] (of the K), boxes [N,4] in image pixels (host)."""
        import pycuda.driver as cuda

        count = len(rows)
        height, width = image_size
        if boxes.shape != (count, 4):
            raise BadInput(f"expected boxes [{count}, 4] for {count} rows, got {list(boxes.shape)}")
        if count == 0:
            return np.zeros((0, height, width), bool)
        rows32 = np.ascontiguousarray(rows, np.int32)
        boxes32 = np.ascontiguousarray(boxes, np.float32)
        size = count * height * width
        rows_device, boxes_device = self._buffer("rows", rows32.nbytes), self._buffer("boxes", boxes32.nbytes)
        output = self._buffer("output", size)
        cuda.memcpy_htod_async(rows_device, rows32, self.stream)
        cuda.memcpy_htod_async(boxes_device, boxes32, self.stream)
        launches = paste_launch(
            masks,
            int(rows_device),
            int(boxes_device),
            int(output),
            count=count,
            mask_size=mask_size,
            image_size=image_size,
            threshold=threshold,
        )
        launch.run(launches, self.stream.handle)
        if self._host.size < size:
            self._host = cuda.pagelocked_empty(size, np.uint8)
        host = self._host[:size]
        cuda.memcpy_dtoh_async(host, output, self.stream)
        self.stream.synchronize()
        return host.view(bool).reshape(count, height, width).copy()

    def _buffer(self, name: str, nbytes: int) -> cuda.DeviceAllocation:
        """A device buffer of at least `nbytes`, reused from call to call."""
        import pycuda.driver as cuda

        held = self._device.get(name)
        if held is None or held[1] < nbytes:
            if held is not None:
                held[0].free()
            held = (cuda.mem_alloc(max(nbytes, 1)), max(nbytes, 1))
            self._device[name] = held
        return held[0]

    def free(self) -> None:
        """Frees the device buffers and drops the page-locked one, while the context they were made in is current."""
        for allocation, _ in self._device.values():
            allocation.free()
        self._device.clear()
        self._host = np.empty(0, np.uint8)
