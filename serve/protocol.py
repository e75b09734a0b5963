"""What a request to the maskrt model carries and what its response answers: the server's side (images out of a
request, detections into outputs) and the client's (inputs for tritonclient, detections out of a result).

A request carries images one way or the other, n images in one request (the batch dimension):

| input | Triton type | shape | |
|---|---|---|---|
| `image` | BYTES | [n, 1] | encoded images: the bytes of a JPEG, PNG, or any file OpenCV decodes |
| `pixels` | UINT8 | [n, h, w, 3] | RGB images of one size |

and is answered, for each of its n images, with (K: the most detections of any image of the request; rows past
`num_detections` are zero or empty):

| output | Triton type | shape | |
|---|---|---|---|
| `num_detections` | INT32 | [n, 1] | |
| `boxes` | FP32 | [n, K, 4] | x1, y1, x2, y2 in the image's own pixels |
| `scores` | FP32 | [n, K] | |
| `labels` | INT64 | [n, K] | the model's label ids |
| `class_names` | BYTES | [n, K] | |
| `masks_rle` | BYTES | [n, K] | each mask as COCO RLE json: {"size": [h, w], "counts": "..."} (pycocotools decodes it) |
| `image_size` | INT32 | [n, 2] | (h, w) |
| `masks` | BOOL | [n, K, h, w] | full masks; computed only when the request names this output |

Everything here is NumPy, OpenCV and the standard library; tritonclient is imported by the client functions only.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from maskrt.contracts.errors import BadInput
from maskrt.runtime.coco import mask_rle
from maskrt.runtime.predictor import Detections
from maskrt.serve import defaults

IMAGE_INPUT = "image"
PIXELS_INPUT = "pixels"
OUTPUTS = ("num_detections", "boxes", "scores", "labels", "class_names", "masks_rle", "image_size", "masks")
FULL_MASKS = "masks"
DEFAULT_OUTPUTS = OUTPUTS[:-1]  # what a client asks for unless it wants the full masks
# The largest image a server decodes (an 8K frame is 33 megapixels): its RGB copy is 200 MB and the letterbox's float
# planes 800 MB; a larger image is refused from its header, before anything is decoded.
MAX_IMAGE_PIXELS = defaults.MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class Found:
    """One image's detections as a client reads them from a response."""

    boxes: np.ndarray  # float32 [N,4]
    scores: np.ndarray  # float32 [N]
    labels: np.ndarray  # int64 [N]
    class_names: list[str]
    masks_rle: list[dict[str, Any]]  # COCO RLE, {"size": [h, w], "counts": str}
    image_size: tuple[int, int]
    masks: np.ndarray | None  # bool [N,h,w] when the full masks were asked for


# ---- server side -----------------------------------------------------------------------------------------------


def request_images(inputs: Mapping[str, np.ndarray | None], max_pixels: int = MAX_IMAGE_PIXELS) -> list[np.ndarray]:
    """The RGB uint8 [h,w,3] images of one request; ValueError naming the input and what is wrong with it."""
    given = [name for name in (IMAGE_INPUT, PIXELS_INPUT) if inputs.get(name) is not None]
    if len(given) != 1:
        raise BadInput(
            f"a request carries its images in exactly one input, '{IMAGE_INPUT}' (BYTES [n,1], encoded images) or "
            f"'{PIXELS_INPUT}' (UINT8 [n,h,w,3], RGB), got {', '.join(repr(n) for n in given) or 'neither'}"
        )
    values = np.asarray(inputs[given[0]])
    if not values.shape or values.shape[0] == 0:
        raise BadInput(f"input '{given[0]}' holds no images (shape {list(values.shape)}): send at least one")
    if given[0] == PIXELS_INPUT:
        if values.dtype != np.uint8 or values.ndim != 4 or values.shape[3] != 3:
            raise BadInput(
                f"input '{PIXELS_INPUT}' must be UINT8 [n, h, w, 3] (RGB 0..255), got {values.dtype} {list(values.shape)}"
            )
        height, width = values.shape[1:3]
        if height * width > max_pixels:
            raise BadInput(f"input '{PIXELS_INPUT}': {height}x{width} images, more than the {max_pixels} pixels this server takes")
        if height == 0 or width == 0:
            raise BadInput(f"input '{PIXELS_INPUT}': images of {height}x{width} pixels have no pixels")
        return [np.ascontiguousarray(image) for image in values]
    flat = values.reshape(values.shape[0], -1)
    if flat.shape[1] != 1:
        raise BadInput(f"input '{IMAGE_INPUT}' must be BYTES [n, 1], one encoded image per row, got {list(values.shape)}")
    return [decode_image(_as_bytes(row[0]), f"input '{IMAGE_INPUT}', image {i}", max_pixels) for i, row in enumerate(flat)]


def _as_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, np.ndarray):
        return value.tobytes()
    if isinstance(value, str):
        return value.encode("latin-1")
    raise BadInput(f"expected the bytes of an encoded image, got a {type(value).__name__}")


def decode_image(data: bytes, what: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded image bytes → RGB uint8 [h,w,3], decoded as runtime.preprocess.read_rgb reads a file; ValueError
    naming `what` for bytes OpenCV cannot decode and for an image larger than `max_pixels` (PNG and JPEG are
    measured from their header, before decoding)."""
    if not data:
        raise BadInput(f"{what}: empty, expected the bytes of an encoded image (JPEG, PNG, ...)")
    size = image_header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise BadInput(f"{what}: a {size[0]}x{size[1]} image, more than the {max_pixels} pixels this server decodes")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BadInput(f"{what}: {len(data)} bytes that are not an image OpenCV decodes (JPEG, PNG, ...)")
    if bgr.shape[0] * bgr.shape[1] > max_pixels:
        raise BadInput(f"{what}: a {bgr.shape[0]}x{bgr.shape[1]} image, more than the {max_pixels} pixels this server decodes")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_header_size(data: bytes) -> tuple[int, int] | None:
    """(h, w) from a PNG's IHDR or a JPEG's SOF marker, without decoding; None for other formats or a header
    that does not say."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if data[:2] == b"\xff\xd8":
        offset = 2
        while offset + 4 <= len(data):
            if data[offset] != 0xFF:
                return None
            marker = data[offset + 1]
            if marker == 0xFF:  # fill byte
                offset += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                offset += 2
                continue
            (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
            # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC): precision, height, width
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and offset + 9 <= len(data):
                height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
                return height, width
            offset += 2 + length
    return None


def detections_outputs(found: Sequence[Detections], full_masks: bool) -> dict[str, np.ndarray]:
    """The response outputs of one request's images (module docstring), padded to the most detections of any."""
    count = len(found)
    most = max((len(d) for d in found), default=0)
    outputs: dict[str, np.ndarray] = {
        "num_detections": np.array([[len(d)] for d in found], np.int32).reshape(count, 1),
        "boxes": np.zeros((count, most, 4), np.float32),
        "scores": np.zeros((count, most), np.float32),
        "labels": np.zeros((count, most), np.int64),
        "class_names": np.full((count, most), b"", dtype=object),
        "masks_rle": np.full((count, most), b"", dtype=object),
        "image_size": np.array([d.image_size for d in found], np.int32).reshape(count, 2),
    }
    for i, detections in enumerate(found):
        n = len(detections)
        outputs["boxes"][i, :n] = detections.boxes
        outputs["scores"][i, :n] = detections.scores
        outputs["labels"][i, :n] = detections.labels
        for j in range(n):
            outputs["class_names"][i, j] = detections.class_names[j].encode()
            outputs["masks_rle"][i, j] = json.dumps(mask_rle(detections.masks[j]), separators=(",", ":")).encode()
    if full_masks:
        height = max((d.image_size[0] for d in found), default=0)
        width = max((d.image_size[1] for d in found), default=0)
        masks = np.zeros((count, most, height, width), bool)
        for i, detections in enumerate(found):
            h, w = detections.image_size
            masks[i, : len(detections), :h, :w] = detections.masks
        outputs[FULL_MASKS] = masks
    return outputs


# ---- client side -----------------------------------------------------------------------------------------------


def client_inputs(module: Any, images: Sequence[bytes] | np.ndarray) -> list[Any]:
    """tritonclient inputs (`module` is tritonclient.http or tritonclient.grpc) for a list of encoded images (bytes)
    or an RGB uint8 [n,h,w,3] array."""
    if isinstance(images, np.ndarray):
        tensor = module.InferInput(PIXELS_INPUT, list(images.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(images))
        return [tensor]
    data = np.array([[bytes(image)] for image in images], dtype=object).reshape(len(images), 1)
    tensor = module.InferInput(IMAGE_INPUT, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return [tensor]


def client_outputs(module: Any, full_masks: bool = False) -> list[Any]:
    """The outputs a client asks for: every one but the full masks, and them too with `full_masks`."""
    return [module.InferRequestedOutput(name) for name in (OUTPUTS if full_masks else DEFAULT_OUTPUTS)]


def found_from_result(result: Any) -> list[Found]:
    """Each image's detections from a tritonclient InferResult (HTTP or gRPC)."""
    counts = result.as_numpy("num_detections").reshape(-1)
    boxes, scores, labels = result.as_numpy("boxes"), result.as_numpy("scores"), result.as_numpy("labels")
    names, rles, sizes = result.as_numpy("class_names"), result.as_numpy("masks_rle"), result.as_numpy("image_size")
    masks = result.as_numpy(FULL_MASKS)
    found = []
    for i, n in enumerate(int(c) for c in counts):
        h, w = (int(v) for v in sizes[i])
        found.append(
            Found(
                boxes=boxes[i, :n].astype(np.float32).reshape(n, 4),
                scores=scores[i, :n].astype(np.float32),
                labels=labels[i, :n].astype(np.int64),
                class_names=[_text(v) for v in names[i, :n]],
                masks_rle=[json.loads(_text(v)) for v in rles[i, :n]],
                image_size=(h, w),
                masks=None if masks is None else masks[i, :n, :h, :w].astype(bool),
            )
        )
    return found


def _text(value: object) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)
