"""Surgery against the plain export on seeded random configurations (tests/differential_support.py): backbones whose
FPN reads one to three maps (two of one stride among them) with or without a pool level, anchors the same at every
level or not, each head pooling one map, a run of maps or two of one stride, small non-square inputs, thresholds and
top-n values, and objects at the canvas' edges and corners. The deploy graph, in both plugin modes, must answer as
the export does on ONNX Runtime, detection by detection, within what the export itself differs from PyTorch by."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from maskrt.convert.settings import DeployOptions
from maskrt.convert.surgery import surgery
from maskrt.plugins import cpu_session

from detection_support import plain_export
from differential_support import (
    deploy_detections,
    detecting_configuration,
    difference,
    export_detections,
    pytorch_detections,
    tolerance,
    within,
)

CONFIGURATIONS = 40


@pytest.mark.parametrize("index", range(CONFIGURATIONS))
def test_the_deploy_graphs_answer_as_the_plain_export(index: int, tmp_path: Path) -> None:
    configuration, model, images = detecting_configuration(index, CONFIGURATIONS)
    exported = plain_export(model, images, tmp_path / "model.onnx")
    reference = export_detections(exported, images)
    allowed = tolerance(difference(pytorch_detections(model, images), reference))
    for plugins in ("native", "maskrt"):
        deploy = surgery(exported, DeployOptions(plugins=plugins), Console(file=io.StringIO()))
        found = difference(reference, deploy_detections(cpu_session(deploy), images))
        assert within(found, allowed), f"{plugins}: {found}, allowed {allowed}, in {configuration}"
