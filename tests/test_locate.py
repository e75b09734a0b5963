"""The part finder reads what it pairs from the graph's structure, and refuses, through the CLI, what it cannot read
for certain: one line on stderr naming the tensors, exit code 2, no output file. The ambiguous graphs are real
exports edited with onnx-graphsurgeon so that their structure no longer tells two parts apart, which their shapes
cannot either."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime
import pytest
from detection_support import (
    Case,
    letterboxed_images,
    make_detecting,
    plain_export,
    run_deploy,
    settings_sources,
    surgery,
)
from detection_support import assert_refused as assert_surgery_refused
from torchvision_reference import reference_outputs
from differential_support import Configuration, Pooling, build_model
from test_surgery import assert_answers_like_pytorch

from maskrt.cli.main import main as maskrt

FPN_MAP = "/backbone/fpn/layer_blocks.{}/layer_blocks.{}.0/Conv_output_0"


def assert_refused(capsys: pytest.CaptureFixture[str], model: Path, *expected: str) -> None:
    """Surgery on `model` refused as detection_support.assert_refused checks, naming the model."""
    output = model.with_name("deploy.onnx")
    capsys.readouterr()
    assert_surgery_refused(capsys, surgery(model, output), output, str(model), *expected)


def edited(exported: Path, output: Path, edit: Callable[[gs.Graph], None]) -> Path:
    graph = gs.import_onnx(onnx.load(exported))
    edit(graph)
    return saved(graph, exported, output)


def saved(graph: gs.Graph, exported: Path, output: Path) -> Path:
    model = gs.export_onnx(graph.cleanup())
    model.ir_version = onnx.load(exported, load_external_data=False).ir_version
    onnx.save(model, output)
    return output


def box_aligns(graph: gs.Graph) -> list[gs.Node]:
    return [n for n in graph.nodes if n.op == "RoiAlign" and n.name.startswith("/roi_heads/box_roi_pool/")]


def test_two_maps_of_one_stride_whose_rois_the_graph_does_not_tell_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mobilenet_plain: Case
) -> None:
    """MobileNetV3's "0" and "1" have the same stride; once both RoiAligns pool the same RoIs, nothing says which
    one LevelMapper's level reads."""

    def pool_the_same_rois(graph: gs.Graph) -> None:
        first, second = box_aligns(graph)
        second.inputs[1], second.inputs[2] = first.inputs[1], first.inputs[2]

    model = edited(mobilenet_plain.exported, tmp_path / "model.onnx", pool_the_same_rois)
    assert_refused(capsys, model, "box head", FPN_MAP.format(0, 0), FPN_MAP.format(1, 1), "same stride")


def test_two_maps_that_claim_the_same_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mobilenet_plain: Case
) -> None:
    def both_level_zero(graph: gs.Graph) -> None:
        for node in graph.nodes:
            level = node.inputs[1].inputs[0] if node.op == "Equal" and node.inputs[1].inputs else None
            if node.name.startswith("/roi_heads/box_roi_pool/") and level is not None and level.op == "Constant":
                if level.attrs["value"].values.tolist() in (1, [1]):
                    node.inputs[1] = gs.Constant(f"{node.name}/zero", np.zeros_like(level.attrs["value"].values))

    model = edited(mobilenet_plain.exported, tmp_path / "model.onnx", both_level_zero)
    assert_refused(capsys, model, "box head", "map 0", FPN_MAP.format(0, 0), FPN_MAP.format(1, 1))


def test_two_rpn_levels_of_one_grid_whose_anchors_the_graph_does_not_tell_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], every_setting_changed_plain: Case
) -> None:
    """Levels "0" and "1" have the same grid and different anchors; once both anchor grids take their shape from
    map "0" (the same shape), nothing says which anchors are level "1"'s."""

    def both_grids_from_map_zero(graph: gs.Graph) -> None:
        maps = graph.tensors()
        for node in graph.nodes:
            if node.op == "Shape" and node.name.startswith("/rpn/anchor_generator/"):
                if node.inputs[0].name == FPN_MAP.format(1, 1):
                    node.inputs[0] = maps[FPN_MAP.format(0, 0)]

    model = edited(every_setting_changed_plain.exported, tmp_path / "model.onnx", both_grids_from_map_zero)
    assert_refused(capsys, model, "anchors", FPN_MAP.format(0, 0), "2 different sets")


def without_cell_anchors(exported: Path, images: np.ndarray, output: Path) -> Path:
    """The export as graph optimisers (onnxslim, onnxsim) leave it: the anchor generator folded into the constant
    anchors of this input size, its cell anchors gone."""
    model = onnx.load(exported)
    graph = gs.import_onnx(model)
    generator = {id(n) for n in graph.nodes if n.name.startswith("/rpn/anchor_generator/")}
    made = [t for n in graph.nodes if id(n) in generator for t in n.outputs]
    folded = {t.name: t for t in made if any(id(c) not in generator for c in t.outputs)}
    del model.graph.output[:]  # ONNX Runtime then runs only what the anchor generator needs
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in folded)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: image / 255 for i, image in zip(session.get_inputs(), images)}
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    for name, tensor in folded.items():
        for consumer in list(tensor.outputs):
            consumer.inputs[consumer.inputs.index(tensor)] = gs.Constant(f"{name}/folded", values[name])
    return saved(graph, exported, output)


def with_level_mapper_rewritten(graph: gs.Graph) -> None:
    """The box head's LevelMapper in another form of the same math: `+ eps` as `- (-eps)`."""
    floor = next(n for n in graph.nodes if n.op == "Floor" and n.name.startswith("/roi_heads/box_roi_pool/"))
    add = floor.inputs[0].inputs[0]
    eps = add.inputs[1].inputs[0].attrs["value"].values
    add.op, add.inputs[1] = "Sub", gs.Constant(f"{add.name}/minus_eps", np.asarray(-eps))


def test_values_the_graph_does_not_show_are_marked_and_anchors_need_default_anchors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], resnet18_plain: Case
) -> None:
    folded = without_cell_anchors(resnet18_plain.exported, resnet18_plain.images, tmp_path / "folded.onnx")
    model = edited(folded, tmp_path / "model.onnx", with_level_mapper_rewritten)
    levels = [f"/rpn/head/cls_logits{suffix}/Conv_output_0" for suffix in ("", "_1", "_2", "_3", "_4")]
    assert_refused(capsys, model, "does not show the anchors", *levels, "--default-anchors")

    output = tmp_path / "deploy.onnx"
    assert maskrt(surgery(model, output, "--plugins", "native", "--default-anchors")) == 0
    sources = settings_sources(capsys.readouterr().err)
    not_shown = {setting: source for setting, source in sources.items() if source != "graph"}
    assert not_shown == {"anchors": "torchvision default", "box_roi_canonical": "torchvision default"}, sources
    assert_answers_like_pytorch(run_deploy(output, resnet18_plain.images), resnet18_plain.reference)


def test_an_export_whose_transform_resizes_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mobilenet_plain: Case
) -> None:
    """torchvision's default transform (min_size 800, max_size 1333) resizes a 320x480 image to 800x1200 before the
    backbone; a deploy graph fed letterboxed 320x480 images would run the backbone at another size than PyTorch."""
    model = copy.deepcopy(mobilenet_plain.model)
    model.transform.min_size, model.transform.max_size = (800,), 1333
    exported = plain_export(model, mobilenet_plain.images, tmp_path / "model.onnx")
    assert_refused(capsys, exported, "resizes its 320x480 input to 800x1200", "model.transform.min_size = (320,)")


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_a_level_mapper_from_level_0_is_read_from_the_graph(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], plugins: str
) -> None:
    """A map of stride 1 is LevelMapper's level 0, whose `- k_min` the exporter leaves out of the traced graph; the
    canonical scale and level are read from the graph all the same."""
    images = letterboxed_images(1, 64, 96, seed=10)
    pooling = Pooling(("0", "1", "2"), 7, 2, 32, 3)
    model = build_model(Configuration(
        seed=10, image_size=(64, 96), batch=1, stage_strides=(1, 2, 2), returned_stages=(0, 1, 2), pool_level=False,
        channels=8, anchor_sizes=((8,), (16,), (32,)), aspect_ratios=((0.5, 1.0, 2.0),) * 3, box_pooling=pooling,
        mask_pooling=Pooling(pooling.maps, 14, 2, 32, 3), num_classes=3, rpn_pre_nms_top_n=1000,
        rpn_post_nms_top_n=1000, rpn_nms_thresh=0.7, rpn_score_thresh=0.0, box_score_thresh=0.05, box_nms_thresh=0.5,
        detections_per_img=100, regression_scale=1.0,
    ))
    make_detecting(model, images)
    assert model.roi_heads.box_roi_pool.map_levels.k_min == 0
    exported = plain_export(model, images, tmp_path / "model.onnx")
    output = tmp_path / "deploy.onnx"
    capsys.readouterr()
    assert maskrt(surgery(exported, output, "--plugins", plugins)) == 0
    sources = settings_sources(capsys.readouterr().err)
    assert sources["box_roi_canonical"] == sources["mask_roi_canonical"] == "graph", sources
    assert_answers_like_pytorch(run_deploy(output, images), reference_outputs(model, images))
