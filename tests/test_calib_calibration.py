"""Calibration sets: what torchvision's transform would see, unreadable images skipped, the cache, the batches."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from rich.console import Console
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from maskrt.calib.calibration import CalibrationSet, calibration_set, feeds
from maskrt.calib.shapes import write_dataset
from maskrt.contracts.files import open_atomically

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZE = (96, 128)  # H x W of a graph's input


@pytest.fixture(scope="module")
def train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("calib") / "train"
    write_dataset(output, count=16, seed=0, size=64)
    return output


@pytest.fixture
def folder(train: Path, tmp_path: Path) -> Path:
    """A copy of the train set that a test may damage."""
    return Path(shutil.copytree(train, tmp_path / "train"))


def recording_console() -> tuple[Console, io.StringIO]:
    text = io.StringIO()
    return Console(file=text, markup=False, highlight=False, width=10_000), text


def make(
    folder: Path, cache: Path, count: int = 8, size: tuple[int, int] = SIZE, console: Console | None = None
) -> CalibrationSet:
    return calibration_set(folder, count, seed=0, input_size=size, mean=MEAN, cache_dir=cache, console=console)


def test_images_are_what_torchvision_feeds_the_model(tmp_path: Path) -> None:
    # Images of other sizes, none taller for its width than the input: for them torchvision's transform, its
    # min_size and max_size the input's sides, resizes by min(H/h, W/w) as the letterbox does.
    rng = np.random.default_rng(3)
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, (h, w) in enumerate([(50, 90), (120, 130), (30, 200), (96, 128)]):
        cv2.imwrite(str(folder / f"{index}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    calibration = calibration_set(folder, 4, 0, SIZE, MEAN, cache_dir=tmp_path / "cache")
    transform = GeneralizedRCNNTransform(min(SIZE), max(SIZE), list(MEAN), list(STD)).eval()
    for name, image, (h, w) in zip(calibration.names, calibration.images, calibration.image_sizes):
        rgb = cv2.cvtColor(cv2.imread(str(folder / name)), cv2.COLOR_BGR2RGB)
        with torch.no_grad():
            batch, _ = transform([torch.from_numpy(rgb).permute(2, 0, 1).float() / 255])
        assert tuple(batch.image_sizes[0]) == (h, w), name
        normalised = (image / 255 - np.float32(MEAN)[:, None, None]) / np.float32(STD)[:, None, None]
        np.testing.assert_allclose(normalised[:, :h, :w], batch.tensors[0, :, :h, :w].numpy(), atol=3e-4)
        assert np.abs(normalised[:, h:, :]).max(initial=0) < 1e-6 and np.abs(normalised[:, :, w:]).max(initial=0) < 1e-6


def test_second_call_reads_no_image(folder: Path, tmp_path: Path) -> None:
    first = make(folder, tmp_path / "cache")
    # Overwrite every image with zeros, keeping its size and modification time: only the cache can answer now.
    for image in (folder / "images").iterdir():
        status = image.stat()
        image.write_bytes(bytes(status.st_size))
        os.utime(image, ns=(status.st_atime_ns, status.st_mtime_ns))
    console, text = recording_console()
    second = make(folder, tmp_path / "cache", console=console)
    assert second.names == first.names and second.skipped == ()
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.image_sizes, first.image_sizes)
    assert f"8 images at 96x128, from the cache {tmp_path / 'cache'}" in text.getvalue()
    # Once the files' times change, the cache is stale and the (now unreadable) images are read again.
    for image in (folder / "images").iterdir():
        os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 1_000_000_000))
    console, text = recording_console()
    with pytest.raises(ValueError, match=f"^{folder / 'images'}: none of the 8 sampled images is readable by OpenCV: "):
        make(folder, tmp_path / "cache", console=console)
    assert "made for other settings (8 of the 8 sampled images new or changed); rebuilding it" in text.getvalue()


def test_unreadable_images_are_skipped_counted_and_named(folder: Path, tmp_path: Path) -> None:
    images = folder / "images"
    png = (images / "000001.png").read_bytes()
    (images / "000001.png").write_bytes(png[: len(png) // 2])
    (images / "000004.png").write_bytes(b"")
    (images / "000009.png").write_bytes(b"GIF89a but not really")
    for name in ("000001.png", "000004.png", "000009.png"):
        assert cv2.imread(str(images / name)) is None  # the oracle: OpenCV cannot read them
    console, text = recording_console()
    calibration = make(folder, tmp_path / "cache", count=16, console=console)
    assert sorted(calibration.skipped) == ["000001.png", "000004.png", "000009.png"]
    assert sorted(calibration.names) == sorted({p.name for p in images.iterdir()} - set(calibration.skipped))
    assert calibration.images.shape == (13, 3, *SIZE) and calibration.image_sizes.shape == (13, 2)
    warnings = [line for line in text.getvalue().splitlines() if "skipped" in line]
    assert len(warnings) == 1 and f"{images}: skipped 3 of 16 calibration images that OpenCV cannot read" in warnings[0]
    assert all(name in warnings[0] for name in calibration.skipped)
    # The cache remembers them: the same warning, without reading anything.
    console, text = recording_console()
    assert make(folder, tmp_path / "cache", count=16, console=console).skipped == calibration.skipped
    assert warnings[0] in text.getvalue() and "from the cache" in text.getvalue()


def test_a_count_above_the_images_there_takes_them_all_and_says_so(train: Path, tmp_path: Path) -> None:
    console, text = recording_console()
    assert len(make(train, tmp_path / "cache", count=64, console=console).names) == 16
    assert f"{train / 'images'}: holds 16 images, fewer than the 64 asked for; calibrating on all of them" in text.getvalue()


def test_a_cache_for_other_settings_is_told_rebuilt_and_replaced(folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    make(folder, cache)
    (cached,) = cache.iterdir()
    console, text = recording_console()
    other_size = make(folder, cache, size=(64, 64), console=console)
    assert f"{cached}: made for other settings (input size 96x128, now 64x64); rebuilding it" in text.getvalue()
    assert other_size.images.shape == (8, 3, 64, 64) and list(cache.iterdir()) == [cached]
    console, text = recording_console()
    calibration_set(folder, 8, 0, (64, 64), (0.5, 0.5, 0.5), cache_dir=cache, console=console)
    assert "made for other settings (mean [0.485, 0.456, 0.406], now [0.5, 0.5, 0.5])" in text.getvalue()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_cache_is_rebuilt_with_a_warning(folder: Path, tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    fresh = make(folder, cache)
    (cached,) = cache.iterdir()
    content = cached.read_bytes()
    damaged = {"garbage": b"PK\x03\x04" + bytes(200), "truncated": content[: len(content) // 2], "empty": b""}
    cached.write_bytes(damaged[damage])
    console, text = recording_console()
    rebuilt = make(folder, cache, console=console)
    assert f"{cached}: not a readable calibration cache (" in text.getvalue() and "rebuilding it" in text.getvalue()
    np.testing.assert_array_equal(rebuilt.images, fresh.images)
    assert cached.read_bytes() == content


def test_a_cache_that_cannot_be_written_costs_a_warning(folder: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    console, text = recording_console()
    calibration = make(folder, blocked, console=console)
    assert calibration.images.shape == (8, 3, *SIZE)
    assert "calibration cache not written" in text.getvalue()
    assert "the next conversion reads the images again" in text.getvalue()


def test_a_cache_file_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="disk full"):
        with open_atomically(tmp_path / "train.npz") as file:
            file.write(b"the first half")
            raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_default_cache_is_under_xdg_cache_home(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    calibration_set(folder, 2, 0, SIZE, MEAN)
    assert [p.suffix for p in (tmp_path / "xdg" / "maskrt" / "calib").iterdir()] == [".npz"]


def test_feeds_batch_at_the_graphs_batch_size(folder: Path, tmp_path: Path) -> None:
    calibration = make(folder, tmp_path / "cache", count=10)
    console, text = recording_console()
    batches = feeds(calibration, 4, ["images", "image_sizes"], console=console)
    assert len(batches) == 2
    for index, batch in enumerate(batches):
        assert list(batch) == ["images", "image_sizes"]
        np.testing.assert_array_equal(batch["images"], calibration.images[4 * index : 4 * index + 4])
        np.testing.assert_array_equal(batch["image_sizes"], calibration.image_sizes[4 * index : 4 * index + 4])
        assert batch["images"].dtype == np.float32 and batch["image_sizes"].dtype == np.int32
    assert "the last 2 of 10 images do not fill a batch of 4: left out" in text.getvalue()
    (single,) = feeds(calibration, 10, ["images"])
    assert list(single) == ["images"] and single["images"].shape == (10, 3, *SIZE)
    with pytest.raises(ValueError, match=f"^{folder / 'images'}: 10 readable calibration images do not fill one batch"):
        feeds(calibration, 16, ["images"])
    with pytest.raises(ValueError, match="graph input 'scale': calibration feeds only 'images' and 'image_sizes'"):
        feeds(calibration, 2, ["images", "scale"])


@pytest.mark.parametrize(
    ("name", "count", "words"),
    [("absent", 8, "no such folder"), ("empty", 8, "no images in it"), ("train", 0, "count must be at least 1, got 0")],
)
def test_bad_calibration_inputs(folder: Path, tmp_path: Path, name: str, count: int, words: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as refused:
        make(tmp_path / name, tmp_path / "cache", count=count)
    assert str(refused.value).startswith(f"{tmp_path / name}: ") and words in str(refused.value), str(refused.value)
    assert not (tmp_path / "cache").exists()


def test_calib_imports_no_torch() -> None:
    script = "import sys, maskrt.calib.calibration; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", script], timeout=60).returncode == 0
