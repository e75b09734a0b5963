"""The folders import one way: contracts ← plugins ← runtime ← calib ← check ← convert ← serve ← cli, each from
the ones before it only, so that the edge install (runtime and below) never loads a conversion stage; and the
command line loads a stage only when its verb runs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("contracts", "plugins", "runtime", "calib", "check", "convert", "serve", "cli")


def maskrt_imports(path: Path) -> set[str]:
    """The maskrt folders a module imports, at its top or inside its functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name.split(".")[1] for name in names if name.startswith("maskrt.") and name.count(".") >= 1}
    return found & set(LAYERS)


@pytest.mark.parametrize("layer", [layer for layer in LAYERS if (ROOT / layer).is_dir()])
def test_each_folder_imports_only_the_folders_below_it(layer: str) -> None:
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    wrong = {
        str(path.relative_to(ROOT)): sorted(maskrt_imports(path) - allowed) for path in sorted((ROOT / layer).rglob("*.py"))
    }
    assert not {path: above for path, above in wrong.items() if above}, f"{layer}/ imports from folders above it"


def test_the_command_line_loads_no_stage_before_its_verb_runs() -> None:
    script = (
        "import sys\n"
        "import maskrt.cli.main\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[:2] in (['maskrt', 'convert'], ['maskrt', 'check']) "
        "or m.split('.')[0] in ('torch', 'torchvision', 'onnx_graphsurgeon', 'onnxruntime'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
