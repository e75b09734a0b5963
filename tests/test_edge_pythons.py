"""The edge install on JetPack's Pythons: 3.8 (JetPack 5.1) and 3.10 (JetPack 6), with their own pins of NumPy, ONNX,
ONNX Runtime and its extensions (setup.py), answer as the main environment does.

.ci/run runs it in two steps. The main environment writes shapes-demo's deploy graphs of both plugin modes, a few val
images and the Predictor's detections on them into a folder:

    python tests/test_edge_pythons.py FOLDER

then a venv of each Python with `pip install .` (no PyTorch) runs this file on that folder, without the suite's
conftest (which needs PyTorch):

    MASKRT_EDGE_GRAPHS=FOLDER python -m pytest --noconftest tests/test_edge_pythons.py

where the Predictor must find the recorded detections, and `maskrt infer`, `maskrt bench` and `maskrt doctor` must
work. Without MASKRT_EDGE_GRAPHS (the main suite) it is skipped.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

PLUGIN_MODES = ("native", "maskrt")
IMAGES = 6
SCORE_THRESHOLD = 0.05  # the model's own box threshold: every detection it gives
FOLDER = os.environ.get("MASKRT_EDGE_GRAPHS")
pytestmark = pytest.mark.skipif(FOLDER is None, reason="run by .ci/run under Python 3.8 and 3.10 on graphs the main environment wrote")


def write_graphs(folder: Path) -> None:
    """The main environment's side: deploy graphs of both plugin modes, val images, and the detections on them."""
    from maskrt.calib.shapes import write_dataset
    from maskrt.cli.main import main

    folder.mkdir(parents=True, exist_ok=True)
    write_dataset(folder / "shapes-val", count=IMAGES, seed=1)
    exported = folder / "model.onnx"
    assert main(["export", "--model", "shapes-demo", "-o", str(exported)]) == 0
    for plugins in PLUGIN_MODES:
        graph = folder / f"deploy.{plugins}.onnx"
        assert main(["convert", str(exported), "--surgery-only", "--plugins", plugins, "-o", str(graph)]) == 0
        np.savez_compressed(folder / f"deploy.{plugins}.detections.npz", **_detections(graph, _images(folder)))
    exported.unlink()
    (folder / "recorded.json").write_text(json.dumps({"python": platform.python_version()}))


def _images(folder: Path) -> list[Path]:
    return sorted((folder / "shapes-val" / "images").iterdir())


def _detections(graph: Path, images: list[Path]) -> dict[str, Any]:
    """Every image's detections, as arrays named by image and field."""
    from maskrt.runtime.predictor import Detections, Predictor

    predictor = Predictor(graph, score_threshold=SCORE_THRESHOLD, device="cpu")
    found: dict[str, Any] = {}
    for image in images:
        detections = predictor(image)
        assert isinstance(detections, Detections)
        for field in ("boxes", "scores", "labels", "masks"):
            found[f"{image.stem}.{field}"] = getattr(detections, field)
    return found


@pytest.fixture(scope="module")
def folder() -> Path:
    assert FOLDER is not None
    return Path(FOLDER)


def test_this_is_a_python_of_the_edge_install() -> None:
    assert sys.version_info[:2] in ((3, 8), (3, 10)), platform.python_version()
    for name in ("torch", "torchvision", "onnx_graphsurgeon"):
        with pytest.raises(ImportError):
            __import__(name)


@pytest.mark.parametrize("plugins", PLUGIN_MODES)
def test_the_predictor_finds_what_the_main_environment_recorded(folder: Path, plugins: str) -> None:
    graph = folder / f"deploy.{plugins}.onnx"
    recorded = np.load(folder / f"deploy.{plugins}.detections.npz")
    found = _detections(graph, _images(folder))
    assert sorted(found) == sorted(recorded.files)
    for name, value in found.items():
        if name.endswith((".labels", ".masks")):
            assert np.array_equal(value, recorded[name]), name
        else:  # another ONNX Runtime may sum in another order: float32 rounding, no more
            np.testing.assert_allclose(value, recorded[name], rtol=1e-5, atol=1e-4, err_msg=name)
    assert sum(len(recorded[name]) for name in recorded.files if name.endswith(".labels")) > 0


def test_infer_bench_and_doctor_run(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from maskrt.cli.main import main

    graph = str(folder / "deploy.maskrt.onnx")
    images = [str(path) for path in _images(folder)[:2]]
    assert main(["infer", graph, *images, "-o", str(tmp_path / "infer")]) == 0
    assert len(json.loads((tmp_path / "infer" / "results.json").read_text())) > 0
    assert main(["bench", graph, "--iterations", "2", "--warmup", "0", "--json"]) == 0
    assert "p50" in capsys.readouterr().out
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    facts = {fact["name"]: fact["value"] for fact in report["facts"]}
    assert facts["Python"].startswith(platform.python_version())
    assert facts["ONNX Runtime"].startswith(__import__("onnxruntime").__version__)


def test_an_engine_without_cuda_python_has_its_masks_pasted_on_the_cpu(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.8 has no cuda-bindings, which launches the GPU paste: a backend that says so gets the CPU's paste."""
    from maskrt.runtime import predictor as predictor_module
    from maskrt.runtime.backends import OnnxRuntimeBackend

    class WithoutGpuPaste(OnnxRuntimeBackend):
        gpu_paste = False

        def paste_masks(self, *args: object) -> np.ndarray:
            raise AssertionError("the GPU paste was used without cuda-python")

    monkeypatch.setattr(predictor_module, "open_backend", lambda path, **options: WithoutGpuPaste(path, device="cpu"))
    image = _images(folder)[0]
    detections = predictor_module.Predictor(folder / "deploy.native.onnx", score_threshold=SCORE_THRESHOLD)(image)
    recorded = np.load(folder / "deploy.native.detections.npz")
    assert isinstance(detections, predictor_module.Detections)
    assert np.array_equal(detections.masks, recorded[f"{image.stem}.masks"])


def test_a_tensorrt_8_engine_is_read_by_its_bindings(monkeypatch: pytest.MonkeyPatch) -> None:
    """JetPack 5.1's TensorRT 8.5 (Python 3.8) has the binding API: runtime/engine.py reads it on this Python."""
    from maskrt.runtime import engine

    class Engine:  # TensorRT 8.5's ICudaEngine, as far as the runtime reads it
        num_bindings = 2

        def get_binding_name(self, index: int) -> str:
            return ("images", "masks")[index]

        def binding_is_input(self, index: int) -> bool:
            return index == 0

        def get_binding_shape(self, index: int) -> tuple[int, ...]:
            return ((1, 3, 128, 128), (1, 100, 28, 28))[index]

        def get_binding_dtype(self, index: int) -> str:
            return "FLOAT"

    tensorrt = types.ModuleType("tensorrt")
    tensorrt.nptype = {"FLOAT": np.float32}.__getitem__  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    tensors = engine._io_tensors(Engine(), 8)  # type: ignore[arg-type]
    assert [(t.name, t.is_input, t.shape, t.dtype) for t in tensors] == [
        ("images", True, (1, 3, 128, 128), np.dtype(np.float32)),
        ("masks", False, (1, 100, 28, 28), np.dtype(np.float32)),
    ]


if __name__ == "__main__":
    write_graphs(Path(sys.argv[1]))
