"""The TensorRT runtime on a GPU: pycuda's buffers in the primary context, the mask paste kernel against
torchvision's CUDA paste, and (where TensorRT is installed) engines of both plugin modes against ONNX Runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from maskrt.calib.shapes import write_dataset
from maskrt.cli.main import main as maskrt
from maskrt.contracts.records import engine_record_path
from maskrt.plugins import cpu_session
from maskrt.runtime import engine
from maskrt.runtime.gpu_paste import GpuPaste
from maskrt.runtime.preprocess import letterbox, read_rgb
from matching import match_detections
from paste_cases import mask_ious, paste_case, torchvision_paste

pytestmark = pytest.mark.gpu
cuda = pytest.importorskip("pycuda.driver", reason="needs pycuda: pip install 'maskrt[tensorrt]'")
pytest.importorskip("cuda.bindings.driver", reason="needs cuda-python: pip install 'maskrt[tensorrt]'")
try:
    cuda.init()
    if cuda.Device.count() == 0:
        raise cuda.Error("no device")
except cuda.Error:
    pytest.skip("needs an NVIDIA GPU with CUDA", allow_module_level=True)


@pytest.fixture()
def primary() -> Any:
    """GPU 0's primary context made current, as TensorRTBackend makes it."""
    context = cuda.Device(0).retain_primary_context()
    context.push()
    yield context
    cuda.Context.pop()
    context.detach()


def test_pycuda_works_in_the_primary_context_the_cuda_runtime_uses(primary: Any) -> None:
    from cuda.bindings import driver

    error, current = driver.cuCtxGetCurrent()
    assert error == driver.CUresult.CUDA_SUCCESS
    error, retained = driver.cuDevicePrimaryCtxRetain(driver.CUdevice(0))
    assert int(current) == int(retained)
    driver.cuDevicePrimaryCtxRelease(driver.CUdevice(0))
    # Memory that the CUDA runtime (torch, as TensorRT) allocates is memory pycuda reads: one context, one address space.
    tensor = torch.arange(1000, dtype=torch.float32, device="cuda")
    torch.cuda.synchronize()
    host = cuda.pagelocked_empty(1000, np.float32)
    cuda.memcpy_dtoh(host, tensor.data_ptr())
    assert np.array_equal(host, np.arange(1000, dtype=np.float32))


def test_a_round_trip_through_page_locked_memory_on_one_stream(primary: Any) -> None:
    stream = cuda.Stream()
    sent = cuda.pagelocked_empty((4, 3, 128, 128), np.float32)
    sent[:] = np.random.default_rng(0).random(sent.shape, np.float32)
    received = cuda.pagelocked_empty(sent.shape, np.float32)
    device = cuda.mem_alloc(sent.nbytes)
    start, middle, end = cuda.Event(), cuda.Event(), cuda.Event()
    start.record(stream)
    cuda.memcpy_htod_async(device, sent, stream)
    middle.record(stream)
    cuda.memcpy_dtoh_async(received, device, stream)
    end.record(stream)
    end.synchronize()
    assert np.array_equal(received, sent)
    assert middle.time_since(start) >= 0 and end.time_since(middle) >= 0
    device.free()


@pytest.mark.parametrize("image, count", [((800, 1344), 100), ((150, 200), 40)])
def test_the_paste_kernel_matches_torchvision_on_cuda(primary: Any, image: tuple[int, int], count: int) -> None:
    masks, boxes = paste_case(count, image, seed=count)
    device = cuda.mem_alloc(masks.nbytes)
    cuda.memcpy_htod(device, masks)
    rows = np.arange(count)[::-1].copy()
    got = GpuPaste(cuda.Stream())(int(device), 28, rows, boxes[rows], image, 0.5)
    want = torchvision_paste(masks[rows], boxes[rows], image, device="cuda")
    assert got.shape == (count, *image) and got.dtype == bool
    assert want.any() and mask_ious(got, want).min() >= 0.999
    device.free()


def _tensorrt_ready() -> bool:
    try:
        import tensorrt

        return hasattr(tensorrt, "Runtime")
    except ImportError:
        return False


needs_tensorrt = pytest.mark.skipif(not _tensorrt_ready(), reason="needs TensorRT: pip install 'maskrt[tensorrt]'")


@pytest.fixture(scope="module")
def shapes_engines(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """engines(plugins): shapes-demo converted to an FP32 engine in that plugin mode (made on first request)."""
    folder = tmp_path_factory.mktemp("engines")
    exported = folder / "model.onnx"
    assert maskrt(["export", "--model", "shapes-demo", "-o", str(exported)]) == 0
    built: dict[str, Path] = {}

    def engine_for(plugins: str) -> Path:
        if plugins not in built:
            output = folder / plugins / "model.engine"
            output.parent.mkdir()
            assert maskrt(["convert", str(exported), "--precision", "fp32", "--plugins", plugins, "-o", str(output)]) == 0
            built[plugins] = output
        return built[plugins]

    return engine_for


@pytest.fixture(scope="module")
def shapes_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("shapes")
    write_dataset(folder, count=6, seed=1, size=128)
    return sorted((folder / "images").glob("*.png"))


def _feeds(backend: engine.TensorRTBackend, image: Path) -> tuple[dict[str, np.ndarray], Any]:
    canvas, box = letterbox(read_rgb(image), backend.info.input_size, backend.info.image_mean)
    return {"images": canvas[None], "image_sizes": np.array([box.resized], np.int32)}, box


@needs_tensorrt
@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_an_engine_answers_like_onnx_runtime(shapes_engines: Callable[[str], Path], shapes_images: list[Path], plugins: str) -> None:
    path = shapes_engines(plugins)
    deploy = cpu_session(path.with_name("model.deploy.onnx"))
    with engine.TensorRTBackend(path) as backend, engine.TensorRTBackend(path, cuda_graph=True) as graphed:
        assert backend.info.class_names[1:] == ("circle", "square", "triangle")
        for image in shapes_images:
            feeds, _ = _feeds(backend, image)
            wanted = [i.name for i in deploy.get_inputs()]
            reference = dict(zip(engine.OUTPUTS, deploy.run(list(engine.OUTPUTS), {k: feeds[k] for k in wanted})))
            got = backend.run(feeds)
            assert set(backend.last_timings_ms) == {"host_to_device", "compute", "device_to_host"}
            (comparison,) = match_detections(reference, got)
            assert not comparison.missing and not comparison.extra
            assert comparison.worst_score <= 1e-3 and comparison.worst_mask <= 1e-3
            for _ in range(2):  # captured on the first run, replayed on the second
                replayed = graphed.run(feeds)
                for name in engine.OUTPUTS:
                    np.testing.assert_allclose(replayed[name], got[name], atol=1e-5)


@needs_tensorrt
def test_masks_pasted_from_the_engine_match_torchvision(shapes_engines: Callable[[str], Path], shapes_images: list[Path]) -> None:
    with engine.TensorRTBackend(shapes_engines("native")) as backend:
        feeds, box = _feeds(backend, shapes_images[0])
        outputs = backend.run(feeds, outputs=("num_detections", "boxes", "scores", "classes"))
        assert "masks" not in outputs
        count = int(outputs["num_detections"][0, 0])
        assert count > 0
        rows = np.arange(count)
        boxes = box.to_original(outputs["boxes"][0, :count])
        got = backend.paste_masks(0, rows, boxes, box.original)
        masks = backend.run(feeds)["masks"][0, :count]
        assert mask_ious(got, torchvision_paste(masks, boxes, box.original, device="cuda")).min() >= 0.999


@needs_tensorrt
def test_a_corrupt_engine_is_refused_in_one_line(shapes_engines: Callable[[str], Path], tmp_path: Path) -> None:
    source = shapes_engines("native")
    damaged = tmp_path / "model.engine"
    data = bytearray(source.read_bytes())
    data[:64] = bytes(64)  # the header TensorRT checks first; the size stays what model.engine.json says
    damaged.write_bytes(bytes(data))
    engine_record_path(damaged).write_text(engine_record_path(source).read_text())
    with pytest.raises(ValueError) as error:
        engine.TensorRTBackend(damaged)
    assert str(error.value).startswith(f"{damaged}: TensorRT cannot read this engine (") and "\n" not in str(error.value)


@needs_tensorrt
def test_an_engine_whose_plugins_are_not_registered_is_refused(shapes_engines: Callable[[str], Path], tmp_path: Path) -> None:
    """A record that wrongly says native: maskrt does not register its plugins, TensorRT cannot find them. In a
    process of its own, whose plugin registry has not seen maskrt's creators."""
    source = shapes_engines("maskrt")
    path = tmp_path / "model.engine"
    path.write_bytes(source.read_bytes())
    record = json.loads(engine_record_path(source).read_text())
    engine_record_path(path).write_text(json.dumps({**record, "plugins": "native"}))
    script = f"""
from maskrt.runtime import engine
try:
    engine.TensorRTBackend({str(path)!r})
except ValueError as error:
    print(error)
"""
    printed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert printed.startswith(f"{path}: the engine uses a TensorRT plugin that is not registered here")


@needs_tensorrt
@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_a_dynamic_batch_engine_reports_its_profile_and_runs_every_batch_like_onnx_runtime(
    tmp_path: Path, shapes_images: list[Path], plugins: str
) -> None:
    """trt-convert --max-batch 4 --opt-batch 2: the engine's optimization profile, read back from the built engine
    (get_tensor_profile_shape, get_profile_shape on 8.x), is 1, 2, 4 images; each batch of 1 to 4 answers image by
    image as the dynamic deploy graph on ONNX Runtime; 5 images are refused in one line."""
    exported, output = tmp_path / "model.onnx", tmp_path / "model.engine"
    assert maskrt(["export", "--model", "shapes-demo", "-o", str(exported)]) == 0
    argv = ["convert", str(exported), "--precision", "fp32", "--plugins", plugins, "--max-batch", "4", "--opt-batch", "2"]
    assert maskrt([*argv, "-o", str(output)]) == 0
    record = json.loads(engine_record_path(output).read_text())
    assert (record["batch"], record["max_batch"], record["opt_batch"]) == (4, 4, 2)
    deploy = cpu_session(output.with_name("model.deploy.onnx"))
    with engine.TensorRTBackend(output) as backend:
        assert backend.batch_range == (1, 2, 4)
        assert (backend.info.batch, backend.info.dynamic_batch) == (4, True)
        prepared = [_feeds(backend, image)[0] for image in shapes_images[:4]]
        for batch in (1, 2, 3, 4, 1):
            feeds = {name: np.concatenate([p[name] for p in prepared[:batch]]) for name in prepared[0]}
            wanted = [i.name for i in deploy.get_inputs()]
            reference = dict(zip(engine.OUTPUTS, deploy.run(list(engine.OUTPUTS), {k: feeds[k] for k in wanted})))
            got = backend.run(feeds)
            assert got["masks"].shape[0] == batch
            for comparison in match_detections(reference, got):
                assert not comparison.missing and not comparison.extra
                assert comparison.worst_score <= 1e-3 and comparison.worst_mask <= 1e-3
        five = {name: np.concatenate([value] * 5) for name, value in prepared[0].items()}
        with pytest.raises(ValueError, match="a batch of 5 images; the engine runs 1 to 4"):
            backend.run(five)
