"""shapes-demo: the shipped checkpoint answers as its model card says, and bad checkpoints are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from maskrt.calib.shapes import write_dataset
from maskrt.check.coco_eval import evaluate
from maskrt.check.torch_detections import detect_dataset
from maskrt.convert import shapes_demo
from maskrt.convert.models import SHAPES_DEMO, build_model, load_model

METRICS = json.loads(shapes_demo.METRICS.read_text(encoding="utf-8"))


def test_the_checkpoint_scores_the_recorded_val_ap(tmp_path: Path) -> None:
    val = METRICS["val"]
    write_dataset(tmp_path / "val", count=val["count"], seed=val["seed"], size=val["size"])
    model = load_model(SHAPES_DEMO, None, None)
    ap = evaluate(tmp_path / "val" / "instances.json", detect_dataset(model, tmp_path / "val"))
    assert ap.box == pytest.approx(METRICS["box_ap"], abs=0.01)
    assert ap.mask == pytest.approx(METRICS["mask_ap"], abs=0.01)
    assert ap.mask >= 0.70


def test_the_model_card_states_the_recorded_ap() -> None:
    card = shapes_demo.CHECKPOINT.with_suffix(".md").read_text(encoding="utf-8")
    assert f"{METRICS['box_ap']:.3f}" in card and f"{METRICS['mask_ap']:.3f}" in card
    assert METRICS["training"]["command"] in card


def test_the_checkpoint_is_small_and_sized_for_the_dataset() -> None:
    assert shapes_demo.CHECKPOINT.stat().st_size <= 25_000_000
    model = load_model(SHAPES_DEMO, None, None)
    assert model.transform.min_size == (shapes_demo.INPUT_SIZE,) and model.transform.max_size == shapes_demo.INPUT_SIZE
    assert model.roi_heads.box_predictor.cls_score.out_features == len(shapes_demo.CLASS_NAMES)


@pytest.mark.parametrize(
    ("damage", "expected"), [("truncated", "not a readable safetensors file: "), ("garbage", "not a safetensors file")]
)
def test_a_damaged_checkpoint_is_refused(tmp_path: Path, damage: str, expected: str) -> None:
    data = shapes_demo.CHECKPOINT.read_bytes()
    bad = tmp_path / "shapes_demo.safetensors"
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x13\x37" * 500)
    with pytest.raises(ValueError, match=expected) as error:
        load_model(SHAPES_DEMO, bad, None)
    assert str(bad) in str(error.value) and "\n" not in str(error.value)


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "mobilenet.safetensors"
    save_file(build_model("maskrcnn_mobilenet_v3_small_fpn", len(shapes_demo.CLASS_NAMES)).state_dict(), str(other))
    with pytest.raises(ValueError) as error:
        load_model(SHAPES_DEMO, other, None)
    message = str(error.value)
    assert message.startswith(f"{other}: not weights for {SHAPES_DEMO}:") and "\n" not in message
    assert "missing (backbone.body.conv1.weight" in message and "unexpected" in message


def test_a_checkpoint_with_another_class_count_is_refused(tmp_path: Path) -> None:
    state = shapes_demo.build_model().state_dict()
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(91, shapes_demo.BOX_HEAD_CHANNELS)
    other = tmp_path / "coco_classes.safetensors"
    save_file(state, str(other))
    with pytest.raises(ValueError, match=r"1 wrong shape \(roi_heads.box_predictor.cls_score.weight\)"):
        load_model(SHAPES_DEMO, other, None)
