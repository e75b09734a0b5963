"""The letterbox (docs/design.md, "The deploy graph"): an image of any size → the deploy graph's fixed H×W input,
as torchvision resizes it.

One function for every place that feeds a deploy graph or an engine: the runtime, calibration (calib/) and the
accuracy check (check/). NumPy and OpenCV only: the edge install has no PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from maskrt.contracts.errors import BadInput
from maskrt.runtime.opencv_log import decoder_messages, quiet_opencv, reason

quiet_opencv()  # maskrt says in its own words what OpenCV could not read


@dataclass(frozen=True)
class Letterbox:
    """Where an original image lies in the letterboxed canvas: at the top-left corner, `resized` pixels."""

    original: tuple[int, int]  # (h, w) of the image given
    resized: tuple[int, int]  # (h, w) inside the canvas: the deploy graph's image_sizes row
    scale: float  # what torchvision's transform multiplied the sides by

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes [N, 4] x1,y1,x2,y2 in canvas pixels → original pixels, as torchvision's resize_boxes maps them
        (by original / resized per axis, in float32)."""
        ratio_h = np.float32(self.original[0]) / np.float32(self.resized[0])
        ratio_w = np.float32(self.original[1]) / np.float32(self.resized[1])
        return (boxes.astype(np.float32) * np.array([ratio_w, ratio_h, ratio_w, ratio_h], np.float32)).astype(np.float32)


def letterbox_geometry(original: tuple[int, int], size: tuple[int, int]) -> Letterbox:
    """The scale and resized size torchvision's GeneralizedRCNNTransform picks when its min_size and max_size make
    min(H/h, W/w) the binding limit: the scale in double precision and each side floor(side * scale), as eager
    torchvision and torch.nn.functional.interpolate compute them."""
    h, w = original
    if h <= 0 or w <= 0:
        raise BadInput(f"image of size {h}x{w} has no pixels")
    scale = min(size[0] / h, size[1] / w)
    resized = (min(size[0], max(1, math.floor(h * scale))), min(size[1], max(1, math.floor(w * scale))))
    return Letterbox(original=(h, w), resized=resized, scale=scale)


def letterbox(image: np.ndarray, size: tuple[int, int], mean: tuple[float, ...]) -> tuple[np.ndarray, Letterbox]:
    """RGB uint8 [h, w, 3] → float32 [3, H, W] RGB 0..255 and where the image lies in it.

    Bilinear resizing without antialiasing, as torchvision resizes the normalised float image
    (interpolate(mode="bilinear", align_corners=False)): PyTorch's sample positions and weights in float32, each row
    blended from its two source columns and then from its two source rows, not rounded back to integers. Resizing
    before normalising moves a value by a few units in the last place only. The padding right and below is the
    normalisation mean (`mean` in 0..1, per RGB channel), which the graph's normalisation turns into torchvision's
    zero padding.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise BadInput(f"expected an RGB image [h, w, 3], got an array of shape {list(image.shape)}")
    geometry = letterbox_geometry((image.shape[0], image.shape[1]), size)
    rh, rw = geometry.resized
    canvas = np.empty((3, size[0], size[1]), np.float32)
    canvas[:] = (np.asarray(mean, np.float32) * 255).reshape(3, 1, 1)
    planes = image.transpose(2, 0, 1)
    if (rh, rw) == geometry.original:
        canvas[:, :rh, :rw] = planes
    else:
        resize_bilinear(planes.astype(np.float32), rh, rw, out=canvas[:, :rh, :rw])
    return canvas, geometry


def resize_bilinear(planes: np.ndarray, height: int, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """float32 [C, h, w] → [C, height, width], as torch's interpolate(mode="bilinear", align_corners=False): each
    output blends two source columns in each of two source rows, then the two rows."""
    low_y, high_y, weight_low_y, weight_high_y = linear_indices(planes.shape[1], height, range(height))
    low_x, high_x, weight_low_x, weight_high_x = linear_indices(planes.shape[2], width, range(width))
    across = np.take(planes, low_x, axis=2)
    across *= weight_low_x
    right = np.take(planes, high_x, axis=2)
    right *= weight_high_x
    across += right  # [C, h, width]
    upper = np.take(across, low_y, axis=1)
    upper *= weight_low_y[:, None]
    lower = np.take(across, high_y, axis=1)
    lower *= weight_high_y[:, None]
    blended: np.ndarray = np.add(upper, lower, out=out)
    return blended


def linear_indices(source: int, target: int, outputs: range) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's source indices and weights of linear interpolation (align_corners=False) from `source` to `target`
    samples, for the outputs given: (low, high, weight of low, weight of high), the weights in float32.

    The source position scale * (output + 0.5) - 0.5 is one fused multiply-add in PyTorch's compiled kernel: here
    the exact product and sum in float64, rounded once to float32."""
    scale = np.float64(np.float32(source) / np.float32(target))
    centres = np.arange(outputs.start, outputs.stop, outputs.step, dtype=np.float32) + np.float32(0.5)
    position = np.maximum((scale * centres.astype(np.float64) - 0.5).astype(np.float32), np.float32(0))
    low = position.astype(np.int64)
    high = np.minimum(low + 1, source - 1)
    weight_high = np.clip(position - low.astype(np.float32), np.float32(0), np.float32(1))
    return low, high, np.float32(1) - weight_high, weight_high


def read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8 [h, w, 3]; BadInput naming the file when it is missing or cannot be decoded."""
    return cv2.cvtColor(read_bgr(path), cv2.COLOR_BGR2RGB)


def read_bgr(path: Path) -> np.ndarray:
    """An image file as OpenCV reads it, BGR uint8 [h, w, 3]; BadInput naming the file when it is missing or cannot
    be decoded, with the decoder's own reason where it gives one (libpng's "IDAT: CRC error")."""
    if not path.is_file():
        raise BadInput(f"{path}: {'is a folder, expected an image file' if path.is_dir() else 'file not found'}")
    with decoder_messages() as printed:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise BadInput(f"{path}: not a readable image{reason(printed)}")
    return image
