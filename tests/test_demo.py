"""`maskrt demo`: every step of the pipeline on shapes-demo, offline, ending in the report and the AP table (here on
a few images; the README gives the time of the full demo)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrt.cli import demo
from maskrt.cli.main import main as maskrt


def test_the_demo_runs_every_step_and_prints_the_ap_of_each_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "VAL_IMAGES", 6)
    monkeypatch.setattr(demo, "TRAIN_IMAGES", 8)
    output = tmp_path / "demo"
    code = maskrt(["demo", "-o", str(output)])
    printed = capsys.readouterr().err
    data = json.loads((output / "report" / "report.json").read_text())
    assert code == (0 if data["gate"]["passed"] else 1), data["gate"]["failures"]
    graphs = ["model.onnx", "deploy.maskrt.onnx", "deploy.native.onnx", "deploy.fp16.onnx", "deploy.int8.onnx"]
    assert [b["name"] for b in data["backends"]][-5:] == graphs
    assert {b["precision"] for b in data["backends"] if b["name"] in graphs} == {"fp32", "fp16", "int8"}
    for name in graphs:
        assert f"\n│ {name} " in printed or f"\n{name} " in printed, name
    # the FP16 and INT8 graphs' AP, as pycocotools scores their results files
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(output / "shapes-val" / "instances.json"))
        for name in ("deploy.fp16.onnx", "deploy.int8.onnx"):
            evaluation = COCOeval(truth, truth.loadRes(str(output / "report" / f"{name}.results.json")), "segm")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            assert data["task"]["backends"][name]["mask"]["AP"] == pytest.approx(100 * evaluation.stats[0], abs=1e-3)
    assert len(list((output / "infer").glob("*.png"))) == demo.INFER_IMAGES
    assert (output / "infer" / "results.json").is_file()
    assert f"report: {output / 'report' / 'index.html'}" in printed
    # the commands it ran, as a user would type them
    assert "$ maskrt check --shapes-demo --onnx" in printed and "--calib-images" in printed
    assert f"calibration: {demo.TRAIN_IMAGES} images at 128x128" in printed


def test_the_demo_refuses_a_folder_that_holds_something(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert maskrt(["demo", "-o", str(tmp_path)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert str(tmp_path) in line and "not an empty folder" in line
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
