"""Image folders and instances jsons, read as pycocotools and OpenCV read them; the seeded sample."""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from rich.console import Console

from maskrt.calib.images import IMAGE_SUFFIXES, ImageEntry, list_images, sample
from maskrt.calib.shapes import write_dataset

COUNT = 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("calib-images") / "val"
    write_dataset(output, count=COUNT, seed=1, size=64)
    return output


def recording_console() -> tuple[Console, io.StringIO]:
    text = io.StringIO()
    return Console(file=text, markup=False, highlight=False, width=10_000), text


def pycocotools_images(annotations: Path) -> set[tuple[int, str]]:
    return {(image_id, image["file_name"]) for image_id, image in COCO(str(annotations)).imgs.items()}


def test_maskrt_layout_gives_pycocotools_ids_and_names(dataset: Path) -> None:
    found = list_images(dataset)
    assert found.folder == dataset / "images" and found.annotations == dataset / "instances.json"
    assert {(e.image_id, e.file_name) for e in found.entries} == pycocotools_images(dataset / "instances.json")
    assert [entry.file_name for entry in found.entries] == sorted(p.name for p in (dataset / "images").iterdir())
    assert all(entry.path == dataset / "images" / entry.file_name for entry in found.entries)
    assert found.missing == () and found.unannotated == ()


def test_coco_layout_with_annotations_given(dataset: Path, tmp_path: Path) -> None:
    # COCO's own layout: val2017/*.jpg and annotations/instances_val2017.json; file names are relative to val2017/.
    shutil.copytree(dataset / "images", tmp_path / "val2017")
    (tmp_path / "annotations").mkdir()
    annotations = tmp_path / "annotations" / "instances_val2017.json"
    shutil.copy(dataset / "instances.json", annotations)
    found = list_images(tmp_path / "val2017", annotations)
    assert found.folder == tmp_path / "val2017" and found.annotations == annotations
    assert {(entry.image_id, entry.file_name) for entry in found.entries} == pycocotools_images(annotations)


def test_disagreements_between_json_and_folder_are_data_and_one_warning_each(dataset: Path, tmp_path: Path) -> None:
    shutil.copytree(dataset, tmp_path / "val")
    images = tmp_path / "val" / "images"
    (images / "000003.png").unlink()
    (images / "000005.png").unlink()
    shutil.copy(images / "000000.png", images / "extra.png")
    console, text = recording_console()
    found = list_images(tmp_path / "val", console=console)
    ids = dict((name, image_id) for image_id, name in pycocotools_images(tmp_path / "val" / "instances.json"))
    assert found.missing == ("000003.png", "000005.png")
    assert found.unannotated == ("extra.png",)
    assert ImageEntry(images / "extra.png", "extra.png", None) in found.entries
    assert {(e.file_name, e.image_id) for e in found.entries if e.image_id is not None} == {
        (name, image_id) for name, image_id in ids.items() if name not in found.missing
    }
    lines = text.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{tmp_path / 'val' / 'instances.json'}: {images} lacks 2 of the 12 images it names: ")
    assert lines[0].endswith("000003.png, 000005.png")
    assert "does not list 1 of its images, they have no annotations: extra.png" in lines[1]


def test_plain_folder_lists_what_opencv_reads(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    written = []
    for suffix in sorted(IMAGE_SUFFIXES):
        # Portable bitmaps and graymaps hold one channel; OpenCV's JPEG 2000 writer needs more than a few pixels.
        pixels = rgb[..., 0] if suffix in (".pbm", ".pgm") else cv2.resize(rgb, (256, 256)) if suffix == ".jp2" else rgb
        path = tmp_path / f"image{suffix.upper() if suffix == '.jpg' else suffix}"
        assert cv2.imwrite(str(path), pixels), suffix
        written.append(path.name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes((tmp_path / "image.png").read_bytes())
    (tmp_path / "nested").mkdir()
    found = list_images(tmp_path)
    assert found.annotations is None and found.missing == () and found.unannotated == ()
    assert [entry.file_name for entry in found.entries] == sorted(written)
    for entry in found.entries:
        assert entry.image_id is None
        image = cv2.imread(str(entry.path), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[2] == 3, entry.file_name


def test_sample_is_seeded_prefix_stable_and_independent_of_listing_order() -> None:
    entries = [ImageEntry(Path(f"{i:05d}.jpg"), f"{i:05d}.jpg", i) for i in range(1000)]
    picked = sample(entries, 64, seed=0)
    assert len({entry.file_name for entry in picked}) == 64
    shuffled = entries[:]
    random.Random(5).shuffle(shuffled)
    assert sample(shuffled, 64, seed=0) == picked
    assert sample(entries, 128, seed=0)[:64] == picked  # a larger count adds to the smaller one
    assert len(set(sample(entries, 64, seed=1)) & set(picked)) < 16  # another seed, another sample
    assert sample(entries[:10], 64, seed=0) == sample(entries[:10], 10, seed=0)
    assert len(sample(entries[:10], 64, seed=0)) == 10
    # A grown folder: the old images still taken are the first of the old sample; new ones take the other places.
    grown = entries + [ImageEntry(Path(f"new{i:05d}.jpg"), f"new{i:05d}.jpg", None) for i in range(100)]
    kept = [entry for entry in sample(grown, 64, seed=0) if entry in entries]
    assert kept == picked[: len(kept)] and len(kept) >= 48


@pytest.mark.parametrize("count", [0, -3])
def test_sample_refuses_a_count_below_one(count: int) -> None:
    with pytest.raises(ValueError, match="at least 1 image"):
        sample([ImageEntry(Path("a.png"), "a.png", None)], count, seed=0)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("absent", "no such folder"),
        ("a-file.png", "is a file, expected a folder of images"),
        ("empty", "no images in it (.avif, .bmp"),
        ("text-only", "no images in it"),
    ],
)
def test_bad_folders_are_refused_naming_the_folder(tmp_path: Path, name: str, words: str) -> None:
    (tmp_path / "a-file.png").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "text-only").mkdir()
    (tmp_path / "text-only" / "notes.txt").write_text("x")
    with pytest.raises(ValueError) as refused:
        list_images(tmp_path / name)
    assert str(refused.value).startswith(f"{tmp_path / name}: ") and words in str(refused.value), str(refused.value)


TWICE = json.dumps({"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "a.png"}]}).encode()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "no such file"),
        ("a folder", "not a readable instances json"),
        (b"\x89PNG not json", "not a readable instances json"),
        (b"[1, 2]", 'not a COCO instances json (no "images" list)'),
        (b'{"annotations": []}', 'not a COCO instances json (no "images" list)'),
        (b'{"images": [{"id": 1}]}', 'images[0] needs an integer "id" and a "file_name"'),
        (b'{"images": [{"id": "7", "file_name": "a.png"}]}', 'images[0] needs an integer "id"'),
        (TWICE, "a.png is listed twice (ids 1 and 2)"),
    ],
)
def test_bad_jsons_are_refused_naming_the_json(
    dataset: Path, tmp_path: Path, content: bytes | str | None, words: str
) -> None:
    annotations = tmp_path / "instances.json"
    if content == "a folder":
        annotations.mkdir()
    elif isinstance(content, bytes):
        annotations.write_bytes(content)
    with pytest.raises(ValueError) as refused:
        list_images(dataset / "images", annotations)
    assert str(refused.value).startswith(f"{annotations}: ") and words in str(refused.value), str(refused.value)


def test_a_json_naming_only_absent_files_is_refused(tmp_path: Path) -> None:
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]}))
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match=r"images: no images in it \(none of the 2 that .*instances.json names\)"):
        list_images(tmp_path)
