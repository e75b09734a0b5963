"""On a GPU: maskrt's paste kernel (maskrt.runtime.gpu_paste) against torchvision's paste_masks_in_image on CUDA and
on the CPU, side by side in one run, for 100 masks on an 800x1344 image (the issue's case), with their agreement.

    python scripts/bench_gpu_paste.py [--count 100] [--size 800x1344] [--repeats 20]

maskrt's time includes what a TensorRT run pays for it: uploading the rows and boxes and downloading the bool masks;
the masks themselves are already on the GPU (the engine's output). torchvision's CUDA time starts from masks on the
GPU too and ends with its bool masks on the host.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from paste_cases import mask_ious, paste_case  # noqa: E402


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: kernel loading, allocator growth
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1e3)
    return float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--size", default="800x1344")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    height, width = (int(side) for side in args.size.split("x"))
    try:
        import pycuda.driver as cuda

        cuda.init()
    except Exception as error:  # no pycuda, no driver or no GPU: nothing to measure here
        print(f"needs an NVIDIA GPU with pycuda (pip install 'maskrt[tensorrt]'): {error}", file=sys.stderr)
        return 3
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from maskrt.runtime.gpu_paste import GpuPaste

    masks, boxes = paste_case(args.count, (height, width), seed=0)
    context = cuda.Device(0).retain_primary_context()
    context.push()
    try:
        device_masks = cuda.mem_alloc(masks.nbytes)
        cuda.memcpy_htod(device_masks, masks)
        paste = GpuPaste(cuda.Stream())
        rows = np.arange(args.count)
        ours = paste(int(device_masks), masks.shape[-1], rows, boxes, (height, width), 0.5)
        ours_ms = median_ms(lambda: paste(int(device_masks), masks.shape[-1], rows, boxes, (height, width), 0.5), args.repeats)

        def torchvision_on(device: str) -> Callable[[], np.ndarray]:
            on_device = torch.from_numpy(masks)[:, None].to(device), torch.from_numpy(boxes).to(device)
            return lambda: (paste_masks_in_image(*on_device, (height, width))[:, 0] > 0.5).cpu().numpy()

        cuda_ms = median_ms(torchvision_on("cuda"), args.repeats)
        cpu_ms = median_ms(torchvision_on("cpu"), max(1, args.repeats // 5))
        ious = mask_ious(ours, torchvision_on("cuda")())
        device_masks.free()
        paste.free()
    finally:
        cuda.Context.pop()
        context.detach()
    print(f"{args.count} masks on {height}x{width} ({torch.cuda.get_device_name(0)}), median of {args.repeats}:")
    print(f"  torchvision paste_masks_in_image, CPU   {cpu_ms:9.2f} ms")
    print(f"  torchvision paste_masks_in_image, CUDA  {cuda_ms:9.2f} ms")
    print(f"  maskrt GPU paste (with transfers)       {ours_ms:9.2f} ms   {cuda_ms / ours_ms:.1f}x torchvision CUDA, {cpu_ms / ours_ms:.1f}x CPU")
    print(f"  mask IoU against torchvision: min {ious.min():.5f}, mean {ious.mean():.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
