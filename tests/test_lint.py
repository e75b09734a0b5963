"""`maskrt lint`: passes deploy graphs, and names what makes other graphs unfit for a static TensorRT build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from maskrt.convert.cli import main as maskrt

from detection_support import Case, convert


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_deploy_graphs_pass(resnet18_plain: Case, plugins: str, capsys: pytest.CaptureFixture[str]) -> None:
    deploy = convert(resnet18_plain.exported, plugins)
    capsys.readouterr()
    assert maskrt(["lint", str(deploy)]) == 0
    assert "ok" in capsys.readouterr().err


def test_a_plain_export_fails_with_its_data_dependent_ops(resnet18_plain: Case, capsys: pytest.CaptureFixture[str]) -> None:
    assert maskrt(["lint", str(resnet18_plain.exported)]) == 2
    report = capsys.readouterr().err
    for what in ("NonZero", "Loop", "If", "not static"):
        assert what in report, report


def test_unsupported_ops_int64_outputs_and_dynamic_shapes_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = gs.Variable("images", np.float32, [1, 3, "height", 8])
    unique = gs.Variable("unique_values", np.float32)
    count = gs.Variable("count", np.int64, [1])
    graph = gs.Graph(
        nodes=[
            gs.Node("Unique", "unique_node", inputs=[images], outputs=[unique]),
            gs.Node("Shape", "shape_node", inputs=[unique], outputs=[count]),
            gs.Node("Det", "det_node", inputs=[images], outputs=[gs.Variable("det", np.float32)]),
        ],
        inputs=[images],
        outputs=[count],
        opset=17,
    )
    path = tmp_path / "bad.onnx"
    onnx.save(gs.export_onnx(graph), path)
    assert maskrt(["lint", str(path)]) == 2
    report = capsys.readouterr().err
    assert "unique_node" in report and "depends on the data" in report
    assert "det_node" in report and "support matrix" in report
    assert "count" in report and "int64" in report
    assert "images" in report and "not static" in report
