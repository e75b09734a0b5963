"""The edge install: maskrt.runtime imports and runs deploy graphs of both plugin modes, and `maskrt infer` and
`maskrt bench` work (and conversion says what to install), in a Python where torch, torchvision and onnx-graphsurgeon cannot be imported (a Jetson
without PyTorch); maskrt.runtime never reaches for the layers above it (calib, check, convert)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

BLOCKER = textwrap.dedent(
    """
    import sys

    class NotOnTheEdge:
        def __init__(self, blocked):
            self.blocked = blocked

        def find_spec(self, name, path=None, target=None):
            if any(name == blocked or name.startswith(blocked + ".") for blocked in self.blocked):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    """
)

RUNTIME_ALONE = BLOCKER + textwrap.dedent(
    """
    import importlib, pkgutil
    import numpy as np

    sys.meta_path.insert(0, NotOnTheEdge(("torch", "torchvision", "onnx_graphsurgeon", "maskrt.calib", "maskrt.check", "maskrt.convert")))
    import maskrt.runtime
    for module in pkgutil.iter_modules(maskrt.runtime.__path__):
        importlib.import_module(f"maskrt.runtime.{module.name}")
    from maskrt.runtime.predictor import Predictor
    for path in sys.argv[1:]:
        found = Predictor(path)(np.zeros((150, 200, 3), np.uint8))
        print(path, len(found))
    """
)

COMMANDS = BLOCKER + textwrap.dedent(
    """
    sys.meta_path.insert(0, NotOnTheEdge(("torch", "torchvision", "onnx_graphsurgeon")))
    from maskrt.cli.main import main
    model, image, out = sys.argv[1:]
    assert main(["infer", model, image, "-o", out]) == 0
    assert main(["bench", model, "--iterations", "2", "--warmup", "0"]) == 0
    assert main(["export", "--model", "shapes-demo", "-o", out + "/model.onnx"]) == 2
    """
)


def test_the_runtime_runs_without_torch_torchvision_or_onnx_graphsurgeon(shapes_demo_graph: Callable[..., Path]) -> None:
    graphs = [str(shapes_demo_graph(1, plugins)) for plugins in ("native", "maskrt")]
    done = subprocess.run([sys.executable, "-c", RUNTIME_ALONE, *graphs], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == graphs


def test_infer_and_bench_run_without_torch(shapes_demo_graph: Callable[..., Path], tmp_path: Path) -> None:
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((150, 200, 3), 90, np.uint8))
    argv = [str(shapes_demo_graph(1, "maskrt")), str(image), str(tmp_path / "out")]
    done = subprocess.run([sys.executable, "-c", COMMANDS, *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "results.json").is_file() and "bench:" in done.stderr
    assert "maskrt export: error: needs torch, which the runtime install leaves out: pip install 'maskrt[convert]'" in done.stderr
