"""The synthetic shapes dataset, read back with pycocotools and OpenCV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from maskrt.calib.shapes import write_dataset
from maskrt.check.torch_detections import read_rgb
from maskrt.cli.main import main

COUNT = 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("shapes") / "val"
    write_dataset(output, count=COUNT, seed=3, size=96)
    return output


def test_pycocotools_reads_every_image_and_category(dataset: Path) -> None:
    coco = COCO(str(dataset / "instances.json"))
    assert len(coco.getImgIds()) == COUNT
    assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == {1: "circle", 2: "square", 3: "triangle"}
    assert len(coco.getAnnIds()) >= COUNT
    for image in coco.loadImgs(coco.getImgIds()):
        assert read_rgb(dataset / "images" / image["file_name"]).shape == (96, 96, 3)


def test_masks_are_the_pixels_drawn_in_each_shapes_colour(dataset: Path) -> None:
    coco = COCO(str(dataset / "instances.json"))
    for image in coco.loadImgs(coco.getImgIds()):
        pixels = read_rgb(dataset / "images" / image["file_name"])
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
            mask = coco.annToMask(annotation).astype(bool)
            in_colour = (pixels == annotation["color"]).all(axis=2)
            assert in_colour[mask].all(), f"{image['file_name']}: mask covers pixels of another colour"
            # The textured background may hit a shape's exact colour in a stray pixel, never in a region.
            assert (in_colour & ~mask).sum() <= 3, f"{image['file_name']}: shape pixels outside its mask"
            assert annotation["area"] == mask.sum()
            ys, xs = np.nonzero(mask)
            x, y, w, h = annotation["bbox"]
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_same_seed_same_images_whatever_the_count(dataset: Path, tmp_path: Path) -> None:
    write_dataset(tmp_path / "again", count=2, seed=3, size=96)
    write_dataset(tmp_path / "other", count=2, seed=4, size=96)
    for name in ("000000.png", "000001.png"):
        first = (dataset / "images" / name).read_bytes()
        assert (tmp_path / "again" / "images" / name).read_bytes() == first
        assert (tmp_path / "other" / "images" / name).read_bytes() != first
    annotations = json.loads((dataset / "instances.json").read_text())["annotations"]
    again = json.loads((tmp_path / "again" / "instances.json").read_text())["annotations"]
    assert again == [a for a in annotations if a["image_id"] <= 2]


def test_cli_writes_a_dataset(tmp_path: Path) -> None:
    assert main(["shapes", "--count", "3", "--seed", "1", "--size", "64", "-o", str(tmp_path / "shapes")]) == 0
    assert len(COCO(str(tmp_path / "shapes" / "instances.json")).getImgIds()) == 3


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--count", "0"], "argument --count: must be at least 1, got 0"), (["--count", "-5"], "got -5")],
)
def test_cli_rejects_a_bad_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    output = tmp_path / "shapes"
    assert main(["shapes", *arguments, "-o", str(output)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error
    assert not output.exists() and not list(tmp_path.iterdir())


def test_cli_refuses_a_folder_that_is_not_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["shapes", "--count", "2", "-o", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(tmp_path) in error and "not an empty folder" in error
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_an_empty_folder_is_filled(tmp_path: Path) -> None:
    output = tmp_path / "empty"
    output.mkdir()
    write_dataset(output, count=1, seed=0, size=64)
    assert (output / "instances.json").is_file() and (output / "images" / "000000.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no staging folder left behind
