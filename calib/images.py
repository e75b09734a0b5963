"""Image folders, with or without a COCO instances json: what calibration and the accuracy check read.

Three layouts are read:
- maskrt's (what `maskrt shapes` writes): DIR/images/*.png with DIR/instances.json beside them;
- a folder of images and the instances json that names them, given apart: val2017/ and
  annotations/instances_val2017.json in COCO's own layout;
- a plain folder of images: no ids, for calibration and for comparisons that need no annotations.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from maskrt.contracts.errors import BadInput

# The image files that the OpenCV maskrt pins (opencv-python 5) decodes; tests/test_calib_images.py checks each.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".avif", ".bmp", ".dib", ".gif", ".jp2", ".tif", ".tiff"}
    | {".pbm", ".pgm", ".ppm", ".pnm"}
)
_NAMES_SHOWN = 5  # file names a warning line lists before "and N more"


@dataclass(frozen=True)
class ImageEntry:
    path: Path
    file_name: str  # as the instances json names it (relative to the image folder); else the file's name
    image_id: int | None  # the instances json's id; None without a json or for a file the json does not list


@dataclass(frozen=True)
class ImageFolder:
    """The images found, and what the instances json and the folder disagree on."""

    folder: Path  # where the images are: DIR/images in maskrt's layout, else DIR
    annotations: Path | None  # the instances json read, if any
    entries: tuple[ImageEntry, ...]  # every image in the folder or named by the json and there, sorted by file name
    missing: tuple[str, ...]  # file names the json lists that are not in the folder

    @property
    def unannotated(self) -> tuple[str, ...]:
        """Image files the json does not list (empty without a json: then nothing is annotated, nothing is amiss)."""
        if self.annotations is None:
            return ()
        return tuple(entry.file_name for entry in self.entries if entry.image_id is None)


def list_images(folder: Path, annotations: Path | None = None, console: Console | None = None) -> ImageFolder:
    """The images of `folder` (sorted by file name) with their ids from the instances json: `annotations`, or
    folder/instances.json when there is one.

    Images of DIR/images/ are read when that folder exists, else those of DIR itself (hidden files skipped); the
    json's file names are relative to that image folder. A json entry whose file is not there, and an image the json
    does not list, are not errors: they are reported in the result, and each kind in one warning line on `console`.
    ValueError "<path>: ..." for a missing folder, a file instead of a folder, no images at all, and an instances json
    that cannot be read or is not shaped as COCO's.
    """
    if not folder.exists():
        raise BadInput(f"{folder}: no such folder")
    if not folder.is_dir():
        raise BadInput(f"{folder}: is a file, expected a folder of images")
    image_folder = folder / "images" if (folder / "images").is_dir() else folder
    if annotations is None and (folder / "instances.json").is_file():
        annotations = folder / "instances.json"
    on_disk = {path.name: path for path in image_folder.iterdir() if _is_image_file(path)}
    ids = read_image_ids(annotations) if annotations is not None else {}
    entries, missing = [], []
    for file_name, image_id in ids.items():
        path = image_folder / file_name
        if path.is_file():
            entries.append(ImageEntry(path, file_name, image_id))
        else:
            missing.append(file_name)
    entries += [ImageEntry(path, name, None) for name, path in on_disk.items() if name not in ids]
    if not entries:
        why = f"none of the {len(ids)} that {annotations} names" if annotations else f"{_suffix_list()} files"
        raise BadInput(f"{image_folder}: no images in it ({why})")
    result = ImageFolder(image_folder, annotations, tuple(sorted(entries, key=_by_name)), tuple(sorted(missing)))
    if console is not None and result.missing:
        console.print(
            f"{annotations}: {image_folder} lacks {len(result.missing)} of the {len(ids)} images it names: "
            f"{name_list(result.missing)}",
            style="yellow",
        )
    if console is not None and result.unannotated:
        console.print(
            f"{image_folder}: {annotations} does not list {len(result.unannotated)} of its images, they have no "
            f"annotations: {name_list(result.unannotated)}",
            style="yellow",
        )
    return result


def read_image_ids(annotations: Path) -> dict[str, int]:
    """file_name → id of every image in a COCO instances json ("images": [{"id": int, "file_name": str}, ...])."""
    try:
        dataset = json.loads(annotations.read_bytes())
    except FileNotFoundError:
        raise BadInput(f"{annotations}: no such file") from None
    except (OSError, ValueError) as error:  # a folder, no permission, not JSON, not UTF-8
        raise BadInput(f"{annotations}: not a readable instances json ({error})") from None
    images = dataset.get("images") if isinstance(dataset, dict) else None
    if not isinstance(images, list):
        raise BadInput(f"{annotations}: not a COCO instances json (no \"images\" list)")
    ids: dict[str, int] = {}
    for index, image in enumerate(images):
        file_name = image.get("file_name") if isinstance(image, dict) else None
        image_id = image.get("id") if isinstance(image, dict) else None
        if not isinstance(file_name, str) or not file_name or type(image_id) is not int:
            raise BadInput(
                f"{annotations}: images[{index}] needs an integer \"id\" and a \"file_name\", got {image!r:.80}"
            )
        if file_name in ids:
            raise BadInput(f"{annotations}: {file_name} is listed twice (ids {ids[file_name]} and {image_id})")
        ids[file_name] = image_id
    return ids


def sample(entries: Sequence[ImageEntry], count: int, seed: int) -> list[ImageEntry]:
    """`count` of `entries` (all of them when there are fewer), chosen by `seed` alone.

    Each image is ranked by a hash of (seed, file name) and the first `count` in rank order are taken, in that order.
    So the choice depends on the file names only, not on the listing order or the machine; a larger count takes the
    smaller count's images first and adds more; and images added to the folder change the sample only where one ranks
    ahead of an image already taken (which it then displaces): a folder that grows from 1000 to 1100 images keeps
    about 91% of a 64-image sample.
    """
    if count < 1:
        raise BadInput(f"the sample needs at least 1 image, got a count of {count}")
    ranked = sorted(entries, key=lambda entry: (_rank(seed, entry.file_name), entry.file_name))
    return ranked[:count]


def name_list(names: Sequence[str]) -> str:
    """'a.png, b.png, c.png' or, past a few names, 'a.png, ... e.png and 12 more': for one warning line."""
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown if len(names) <= _NAMES_SHOWN else f"{shown} and {len(names) - _NAMES_SHOWN} more"


def _rank(seed: int, file_name: str) -> bytes:
    return hashlib.blake2b(f"{seed}\0{file_name}".encode(), digest_size=8).digest()


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def _by_name(entry: ImageEntry) -> str:
    return entry.file_name


def _suffix_list() -> str:
    return ", ".join(sorted(IMAGE_SUFFIXES))
