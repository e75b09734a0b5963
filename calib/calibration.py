"""INT8 calibration data: a seeded sample of a folder's images through the runtime's letterbox, in the deploy graph's
batches, cached so that a second conversion reads no image.

The cache is one .npz per image folder (and instances json) under cache_dir: the letterboxed tensors with the key they
were made for: each sampled file's path, size and modification time, the input size, the normalisation mean, and
the versions of this format and of OpenCV, which resizes. A cache whose key does not match (other settings, changed
images, a damaged file) is rebuilt and replaced, with a warning saying why.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.console import Console

from maskrt.calib.images import ImageEntry, list_images, name_list, sample
from maskrt.contracts.errors import BadInput
from maskrt.contracts.files import open_atomically
from maskrt.plugins.kernel_build import cache_dir as maskrt_cache_dir
from maskrt.runtime.preprocess import letterbox, read_rgb
from maskrt.runtime.progress import track

CACHE_FORMAT = 1  # bump when the letterbox or what a cache file holds changes: older caches are then rebuilt


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    images: np.ndarray  # float32 [N, 3, H, W]: letterboxed RGB 0..255, the deploy graph's `images`
    image_sizes: np.ndarray  # int32 [N, 2]: (h, w) of each image inside the letterbox, the graph's `image_sizes`
    names: tuple[str, ...]  # file names (relative to `folder`) in the sample's order
    skipped: tuple[str, ...]  # sampled files that OpenCV cannot read
    folder: Path  # where the images are (DIR/images in maskrt's layout)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/maskrt/calib, or ~/.cache/maskrt/calib."""
    return maskrt_cache_dir() / "calib"


def calibration_set(
    folder: Path,
    count: int,
    seed: int,
    input_size: tuple[int, int],
    mean: tuple[float, ...],
    annotations: Path | None = None,
    cache_dir: Path | None = None,
    console: Console | None = None,
) -> CalibrationSet:
    """`count` images of `folder` (calib.images.sample with `seed`), letterboxed to `input_size` with padding `mean`
    (normalisation mean, 0..1 per RGB channel).

    Unreadable images are skipped, and named with their count in a warning; ValueError "<folder>: ..." when none is
    readable, for a bad count and for what list_images refuses. Read from and written to the cache (default:
    default_cache_dir()); a cache that cannot be written costs only a warning.
    """
    if count < 1:
        raise BadInput(f"{folder}: the calibration image count must be at least 1, got {count}")
    if len(input_size) != 2 or min(input_size) < 1:
        raise BadInput(f"{folder}: the input size must be two positive sides (H, W), got {input_size}")
    if len(mean) != 3:
        raise BadInput(f"{folder}: the normalisation mean must have 3 values (R, G, B), got {mean}")
    listing = list_images(folder, annotations, console)
    if len(listing.entries) < count:
        held = len(listing.entries)
        _warn(console, f"{listing.folder}: holds {held} images, fewer than the {count} asked for; calibrating on all of them")
    chosen = sample(listing.entries, count, seed)
    key = _cache_key(listing.folder.resolve(), chosen, input_size, mean)
    cache = (cache_dir or default_cache_dir()) / _cache_name(folder, annotations)
    calibration = _read_cache(cache, key, listing.folder, console)
    if calibration is None:
        calibration = _letterbox_all(chosen, input_size, mean, listing.folder, console)
        _write_cache(cache, key, calibration, console)
        where = f"cached in {cache}"
    else:
        where = f"from the cache {cache}"
    if console is not None:
        if calibration.skipped:
            console.print(
                f"{listing.folder}: skipped {len(calibration.skipped)} of {len(chosen)} calibration images that OpenCV "
                f"cannot read: {name_list(calibration.skipped)}",
                style="yellow",
            )
        height, width = input_size
        console.print(f"calibration: {len(calibration.names)} images at {height}x{width}, {where}")
    return calibration


def feeds(
    calibration: CalibrationSet,
    batch: int,
    input_names: Sequence[str],
    console: Console | None = None,
    partial_last: bool = False,
) -> list[dict[str, np.ndarray]]:
    """The calibration set in batches of `batch` images, each a feed dict of the graph's `input_names` ("images",
    and "image_sizes" where the graph has it); views, not copies.

    A last batch that would not be full is left out (said on `console`), or kept smaller with `partial_last` (a
    dynamic-batch graph runs any batch); ValueError when not one batch is full.
    """
    tensors = {"images": calibration.images, "image_sizes": calibration.image_sizes}
    for name in input_names:
        if name not in tensors:
            raise BadInput(f"graph input '{name}': calibration feeds only 'images' and 'image_sizes'")
    if batch < 1:
        raise BadInput(f"{calibration.folder}: the batch must be at least 1, got {batch}")
    available = len(calibration.names)
    batches = available // batch
    if batches == 0:
        raise BadInput(
            f"{calibration.folder}: {available} readable calibration images do not fill one batch of {batch}"
        )
    left_out = available - batches * batch
    if left_out and partial_last:
        batches += 1
    elif left_out and console is not None:
        console.print(
            f"calibration: the last {left_out} of {available} images do not fill a batch of {batch}: left out",
            style="yellow",
        )
    return [{name: tensors[name][i * batch : (i + 1) * batch] for name in input_names} for i in range(batches)]


def _letterbox_all(
    chosen: list[ImageEntry],
    input_size: tuple[int, int],
    mean: tuple[float, ...],
    folder: Path,
    console: Console | None,
) -> CalibrationSet:
    images = np.empty((len(chosen), 3, *input_size), np.float32)
    sizes = np.empty((len(chosen), 2), np.int32)
    names: list[str] = []
    skipped: list[str] = []
    for entry in track(chosen, "calibration images", console, unit="images"):
        try:
            rgb = read_rgb(entry.path)
        except ValueError:
            skipped.append(entry.file_name)
            continue
        canvas, box = letterbox(rgb, input_size, mean)
        images[len(names)] = canvas
        sizes[len(names)] = box.resized
        names.append(entry.file_name)
    if not names:
        raise BadInput(
            f"{folder}: none of the {len(chosen)} sampled images is readable by OpenCV: {name_list(skipped)}"
        )
    if skipped:
        images, sizes = images[: len(names)].copy(), sizes[: len(names)].copy()
    return CalibrationSet(images, sizes, tuple(names), tuple(skipped), folder)


def _cache_key(
    image_folder: Path, chosen: list[ImageEntry], input_size: tuple[int, int], mean: tuple[float, ...]
) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "opencv": cv2.__version__,
        "input_size": [int(side) for side in input_size],
        "mean": [float(value) for value in mean],
        "images": [[str(image_folder / entry.file_name), *_file_state(entry.path)] for entry in chosen],
    }


def _file_state(path: Path) -> tuple[int, int]:
    """(size, mtime in ns); (-1, -1) for a file that is gone, which then reads as unreadable."""
    try:
        status = path.stat()
    except OSError:
        return -1, -1
    return status.st_size, status.st_mtime_ns


def _cache_name(folder: Path, annotations: Path | None) -> str:
    """One cache file per image folder and instances json: new settings replace it rather than pile up beside it."""
    source = f"{folder.resolve()}\0{annotations.resolve() if annotations is not None else ''}"
    return f"{folder.resolve().name}-{hashlib.sha256(source.encode()).hexdigest()[:16]}.npz"


def _read_cache(cache: Path, key: dict[str, Any], folder: Path, console: Console | None) -> CalibrationSet | None:
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as data:
            stored = json.loads(str(data["key"]))
            if stored != key:
                _warn(console, f"{cache}: made for other settings ({_differences(stored, key)}); rebuilding it")
                return None
            images, sizes = data["images"], data["image_sizes"]
            names = tuple(str(name) for name in data["names"])
            skipped = tuple(str(name) for name in data["skipped"])
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
        _warn(console, f"{cache}: not a readable calibration cache ({error}); rebuilding it")
        return None
    expected = (len(names), 3, *key["input_size"])
    intact = images.shape == expected and images.dtype == np.float32
    if not intact or sizes.shape != (len(names), 2) or sizes.dtype != np.int32:
        _warn(console, f"{cache}: damaged, its tensors are not {list(expected)}; rebuilding it")
        return None
    return CalibrationSet(images, sizes, names, skipped, folder)


def _differences(stored: Any, key: dict[str, Any]) -> str:
    if not isinstance(stored, dict):
        return "an unknown key"
    if stored.get("format") != key["format"] or stored.get("opencv") != key["opencv"]:
        return (
            f"cache format {stored.get('format')} and OpenCV {stored.get('opencv')}, "
            f"now {key['format']} and {key['opencv']}"
        )
    differences = []
    if stored.get("input_size") != key["input_size"]:
        differences.append(f"input size {_size(stored.get('input_size'))}, now {_size(key['input_size'])}")
    if stored.get("mean") != key["mean"]:
        differences.append(f"mean {stored.get('mean')}, now {key['mean']}")
    if stored.get("images") != key["images"]:
        images = stored.get("images")
        cached = {json.dumps(image) for image in images} if isinstance(images, list) else set()
        changed = sum(json.dumps(image) not in cached for image in key["images"])
        differences.append(f"{changed} of the {len(key['images'])} sampled images new or changed")
    return ", ".join(differences) or "an unknown key"


def _size(size: Any) -> str:
    return "x".join(str(side) for side in size) if isinstance(size, list) else str(size)


def _write_cache(cache: Path, key: dict[str, Any], calibration: CalibrationSet, console: Console | None) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open_atomically(cache) as file:  # streamed: the tensors are not copied into one buffer first
            np.savez(
                file,
                key=np.array(json.dumps(key)),
                images=calibration.images,
                image_sizes=calibration.image_sizes,
                names=np.array(calibration.names, dtype=str),
                skipped=np.array(calibration.skipped, dtype=str),
            )
    except OSError as error:
        _warn(console, f"{cache}: calibration cache not written ({error}); the next conversion reads the images again")


def _warn(console: Console | None, message: str) -> None:
    if console is not None:
        console.print(message, style="yellow")
