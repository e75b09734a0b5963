"""Surgery proven against PyTorch: ONNX Runtime on deploy.onnx answers like the torchvision model on the same
letterboxed images (every detection matched: same class, box IoU ≥ 0.99, score and M×M mask within 1e-3, nothing
extra), for exports from `maskrt export` and from plain `torch.onnx.export`, in both plugin modes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from detection_support import (
    Case,
    assert_matches,
    calibrate_batchnorm,
    convert,
    detecting_model,
    letterboxed_images,
    make_detecting,
    plain_case,
    plain_export,
    run_deploy,
    settings_sources,
    surgery,
)
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from differential_support import deploy_detections, difference, export_detections, pytorch_detections, tolerance, within
from torchvision_reference import keep_input_size, reference_outputs

from maskrt.calib.shapes import render_sample
from maskrt.cli.main import main as maskrt
from maskrt.contracts.plugins import BATCHED_NMS, ONNX_DOMAIN, PLUGIN_NAMESPACE, ROI_ALIGN
from maskrt.contracts.records import DEPLOY_KEY, DetectionSettings, read_deploy_record, read_metadata
from maskrt.convert.models import load_model
from maskrt.convert.settings import record_of
from maskrt.plugins import cpu_session


def assert_answers_like_pytorch(deploy: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert (reference["num_detections"] >= 5).all(), "the test model should detect something in every image"
    assert_matches(deploy, reference)
    for name in ("boxes", "scores", "classes", "masks"):
        for b, n in enumerate(deploy["num_detections"][:, 0]):
            assert not deploy[name][b, n:].any(), f"{name} rows past num_detections must be zero"


@pytest.mark.slow
def test_resnet50_fpn_from_maskrt_export_at_full_size(resnet50_fpn: Case, converted: Callable[[Case, str], Path]) -> None:
    for plugins in ("native", "maskrt"):
        deploy = converted(resnet50_fpn, plugins)
        assert_answers_like_pytorch(run_deploy(deploy, resnet50_fpn.images), resnet50_fpn.reference)


@pytest.mark.slow
def test_resnet50_fpn_v2_from_plain_export_at_full_size(tmp_path: Path) -> None:
    images = letterboxed_images(1, 800, 1344, seed=1)
    model = detecting_model("maskrcnn_resnet50_fpn_v2", 91, images)
    exported = plain_export(model, images, tmp_path / "model.onnx")
    assert_answers_like_pytorch(run_deploy(convert(exported, "native"), images), reference_outputs(model, images))


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
@pytest.mark.parametrize("case", ["resnet18_plain", "mobilenet_maskrt"])
def test_small_fpn_variants_with_three_classes_batch_two(
    request: pytest.FixtureRequest, converted: Callable[[Case, str], Path], case: str, plugins: str
) -> None:
    variant: Case = request.getfixturevalue(case)
    deploy = converted(variant, plugins)
    assert_answers_like_pytorch(run_deploy(deploy, variant.images), variant.reference)


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_a_mobilenet_v3_fpn_from_a_plain_export(
    mobilenet_plain: Case, converted: Callable[[Case, str], Path], plugins: str
) -> None:
    """Two FPN maps of one stride: the RPN levels and the pooled map are told apart by the graph's structure."""
    deploy = converted(mobilenet_plain, plugins)
    assert_answers_like_pytorch(run_deploy(deploy, mobilenet_plain.images), mobilenet_plain.reference)


def test_torchvisions_mobile_recipe_at_512(tmp_path: Path) -> None:
    """The held-out MobileNetV3 check as it was reported: torchvision's recipe (maps "0" and "1" both 16x16 at 512,
    the same 15 anchors on both, pooling over both: one LevelMapper level), 5 classes, 512x512, batch 1, BatchNorm
    statistics from the image and both box regressors scaled by 0.1, nothing else. Both deploy graphs answer as the
    plain export does, detection by detection."""
    images = letterboxed_images(1, 512, 512, seed=0)
    model = load_model("maskrcnn_mobilenet_v3_large_fpn", None, 5, seed=0)
    keep_input_size(model, 512, 512)
    calibrate_batchnorm(model, [torch.from_numpy(image) / 255 for image in images])
    with torch.no_grad():
        model.rpn.head.bbox_pred.weight.mul_(0.1)
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(0.1)
    exported = plain_export(model, images, tmp_path / "model.onnx")
    reference = export_detections(exported, images)
    allowed = tolerance(difference(pytorch_detections(model, images), reference))
    assert allowed.pairs >= 50
    for plugins in ("native", "maskrt"):
        found = difference(reference, deploy_detections(cpu_session(convert(exported, plugins)), images))
        assert within(found, allowed), f"{plugins}: {found}, allowed {allowed}"


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_a_model_with_every_setting_changed_converts_from_a_plain_export_without_flags(
    every_setting_changed_plain: Case, plugins: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Anchors (different at the two levels of one grid), normalisation, padding, top-n values, thresholds, box coder
    weights, detections per image and pooling levels, all read from the graph of a plain export."""
    case = every_setting_changed_plain
    capsys.readouterr()
    deploy = convert(case.exported, plugins)
    sources = settings_sources(capsys.readouterr().err)
    assert len(sources) > 12 and set(sources.values()) == {"graph"}, sources
    assert_answers_like_pytorch(run_deploy(deploy, case.images), case.reference)
    # The settings recorded in the deploy graph are the model's own, as float32 (the graph's constants).
    recorded = read_metadata(onnx.load(deploy, load_external_data=False), DEPLOY_KEY)["settings"]
    own = asdict(record_of(case.model, "custom", (320, 480), 2, ()).settings)
    assert {k: np.float32(v).tolist() for k, v in recorded.items()} == {k: np.float32(v).tolist() for k, v in own.items()}
    changed = {k for k, v in asdict(DetectionSettings()).items() if own[k] != v}
    assert changed == set(own) - {"box_min_size"}, "the model should change every setting that torchvision lets it"


SLIVER_RATIOS = (0.1, 1.0, 10.0)  # flat (26x2 px at size 8), square and tall anchors


def sliver_model(images: np.ndarray) -> nn.Module:
    """A ResNet-18 FPN whose RPN moves its flat anchors two of their heights down and its tall ones two widths right:
    the last row's and column's become proposals one pixel thick, clipped at the canvas' far edges, that LevelMapper
    sends to the stride-4 map, where they are a quarter of a pixel thick. Flat and tall anchors are the RPN's
    favourites, and without a score threshold or NMS every proposal gives a detection of each class: the slivers are
    detected too."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None)
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), (SLIVER_RATIOS,) * 5)
    model = MaskRCNN(
        backbone, num_classes=3, rpn_anchor_generator=anchors, rpn_post_nms_top_n_test=200, box_nms_thresh=1.0,
        box_detections_per_img=400,
    ).eval()
    flat, tall = SLIVER_RATIOS.index(0.1), SLIVER_RATIOS.index(10.0)
    with torch.no_grad():  # bbox_pred's channels are (anchor, dx dy dw dh)
        model.rpn.head.bbox_pred.bias[4 * flat + 1] = 2.0
        model.rpn.head.bbox_pred.bias[4 * tall + 0] = 2.0
    make_detecting(model, images)
    with torch.no_grad():
        model.rpn.head.cls_logits.bias[[flat, tall]] += 4.0
    model.roi_heads.score_thresh = 0.0
    return model


@pytest.fixture(scope="module")
def slivers(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """sliver_model on one 96x128 image, from plain torch.onnx.export."""
    images = letterboxed_images(1, 96, 128, seed=8)
    model = sliver_model(images)
    return plain_case(model, images, tmp_path_factory.mktemp("slivers"))


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_slivers_on_the_canvas_far_edges_pool_as_in_torchvision(slivers: Case, plugins: str) -> None:
    """roi_align widens a RoI under a pixel to one pixel; at a map's far edge that samples past the map, where
    torchvision reads zero (issue 17: a 2-pixel box in the corner of a ResNet-50 canvas scored 0.629 for 0.527)."""
    reference = slivers.reference
    x1, y1, x2, y2 = reference["boxes"][0, : reference["num_detections"][0, 0]].T
    on_far_edges = ((y2 == 96) & (y2 - y1 < 4)) | ((x2 == 128) & (x2 - x1 < 4))
    assert on_far_edges.sum() >= 3, "the model should detect slivers on the canvas' far edges"
    assert_answers_like_pytorch(run_deploy(convert(slivers.exported, plugins), slivers.images), reference)


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_a_canvas_padded_by_more_than_half_an_octave(tmp_path: Path, plugins: str) -> None:
    """torchvision takes each map's scale from the image's height, not the padded batch's: a 66-pixel canvas padded to
    96 gives the stride-4 map a scale of 1/2, so that RoIs reach past the maps, where torchvision reads zero."""
    images = letterboxed_images(1, 66, 96, seed=9)
    model = detecting_model("maskrcnn_resnet18_fpn", 3, images)
    assert model.roi_heads.box_roi_pool.scales[0] == 0.5, "torchvision should pool the stride-4 map at a scale of 1/2"
    exported = plain_export(model, images, tmp_path / "model.onnx")
    assert_answers_like_pytorch(run_deploy(convert(exported, plugins), images), reference_outputs(model, images))


@pytest.fixture(scope="module")
def shapes_demo(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """`maskrt export --model shapes-demo` at batch 4, and four of its val images (seed 1)."""
    images = np.stack([render_sample(seed=1, index=i, size=128)[0] for i in range(4)]).transpose(0, 3, 1, 2)
    images = images.astype(np.float32)
    exported = tmp_path_factory.mktemp("shapes-demo") / "model.onnx"
    assert maskrt(["export", "--model", "shapes-demo", "--batch", "4", "-o", str(exported)]) == 0
    model = load_model("shapes-demo", None, None)
    return Case(model, images, exported, (), reference_outputs(model, images))


@pytest.mark.parametrize("plugins", ["native", "maskrt"])
def test_the_shapes_demo_model_on_its_val_images(shapes_demo: Case, plugins: str) -> None:
    """A real trained model on real images, at its own thresholds: `maskrt export --model shapes-demo`."""
    deploy = convert(shapes_demo.exported, plugins)
    assert_answers_like_pytorch(run_deploy(deploy, shapes_demo.images), shapes_demo.reference)


class UNetMaskHead(nn.Module):
    """A mask head unlike torchvision's: down, up by interpolation, skip concatenation; same shapes in and out."""

    def __init__(self, channels: int = 256):
        super().__init__()
        self.down = nn.Conv2d(channels, 64, 3, stride=2, padding=1)
        self.up = nn.Conv2d(64, 64, 3, padding=1)
        self.merge = nn.Conv2d(channels + 64, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = torch.relu(self.down(x))
        up = nn.functional.interpolate(torch.relu(self.up(low)), size=x.shape[-2:], mode="nearest")
        return torch.relu(self.merge(torch.cat([x, up], dim=1)))


def test_a_custom_mask_head_is_reused_as_exported(tmp_path: Path) -> None:
    images = letterboxed_images(1, 320, 480, seed=3)
    model = detecting_model("maskrcnn_resnet18_fpn", 3, images)
    torch.manual_seed(1)
    model.roi_heads.mask_head = UNetMaskHead().eval()
    assert not isinstance(model.roi_heads.mask_head, MaskRCNNHeads)
    exported = plain_export(model, images, tmp_path / "model.onnx")
    assert_answers_like_pytorch(run_deploy(convert(exported, "native"), images), reference_outputs(model, images))


def test_an_opset_11_export_converts(tmp_path: Path) -> None:
    """Opset 11 is the first with RoiAlign and NonMaxSuppression; surgery upgrades the graph to opset 13."""
    images = letterboxed_images(1, 320, 480, seed=6)
    model = detecting_model("maskrcnn_resnet18_fpn", 3, images)
    exported = plain_export(model, images, tmp_path / "model.onnx", opset=11)
    assert_answers_like_pytorch(run_deploy(convert(exported, "native"), images), reference_outputs(model, images))


def test_a_dynamic_size_export_converts_at_the_given_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = letterboxed_images(1, 320, 480, seed=4)
    model = detecting_model("maskrcnn_resnet18_fpn", 3, images)
    exported = plain_export(model, letterboxed_images(1, 256, 384), tmp_path / "model.onnx", dynamic=True)
    height = onnx.load(exported).graph.input[0].type.tensor_type.shape.dim[1]
    assert height.dim_param == "height", "the export should have a dynamic height"

    output = tmp_path / "deploy.onnx"
    assert maskrt(surgery(exported, output)) == 2
    assert "dynamic input size" in capsys.readouterr().err and not output.exists()
    # Its transform resizes 400x600 to 319x479 (0.8 in float32), and keeps 320x480: the size to ask for, not a new export.
    assert maskrt(surgery(exported, output, "--input-size", "400x600")) == 2
    [refused] = capsys.readouterr().err.strip().splitlines()
    assert "resizes its 400x600 input to 319x479" in refused and refused.endswith("Its transform keeps --input-size 320x480: convert at that size")
    deploy = convert(exported, "native", "--input-size", "320x480")
    assert_answers_like_pytorch(run_deploy(deploy, images), reference_outputs(model, images))


def test_plugin_mode_emits_the_plugin_nodes_of_the_design(
    resnet18_plain: Case, converted: Callable[[Case, str], Path]
) -> None:
    deploy = onnx.load(converted(resnet18_plain, "maskrt"))
    plugin_nodes = [n for n in deploy.graph.node if n.domain == ONNX_DOMAIN]
    assert sorted(n.op_type for n in plugin_nodes) == [BATCHED_NMS, BATCHED_NMS, ROI_ALIGN, ROI_ALIGN]
    for node in plugin_nodes:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes["plugin_namespace"] == PLUGIN_NAMESPACE.encode() and attributes["plugin_version"] == b"1"
        if node.op_type == ROI_ALIGN:
            assert len(node.input) == 5  # rois + P2..P5
            assert (attributes["sampling_ratio"], attributes["aligned"], attributes["min_level"], attributes["max_level"]) == (2, 0, 2, 5)
            assert attributes["output_size"] in (7, 14)
    assert not {"NonMaxSuppression", "RoiAlign", "If", "Loop", "NonZero"} & {n.op_type for n in deploy.graph.node}
    shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in deploy.graph.output}
    assert shapes == {
        "num_detections": [2, 1],
        "boxes": [2, 100, 4],
        "scores": [2, 100],
        "classes": [2, 100],
        "masks": [2, 100, 28, 28],
    }
    assert [d.dim_value for d in deploy.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 320, 480]


def test_detections_per_image_are_recorded_as_the_graph_keeps_them(
    shapes_demo_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """shapes-demo keeps 200 proposals and has 3 classes: no image can have more than 600 detections, as in
    torchvision; the table and the record say 600, as the graph's outputs do, not the 100000 asked for."""
    output = tmp_path / "deploy.onnx"
    assert maskrt(surgery(shapes_demo_export, output, "--plugins", "native", "--detections-per-img", "100000")) == 0
    assert settings_sources(capsys.readouterr().err)["detections_per_img"] == "flag (100000, capped at all 600 proposal-class pairs)"
    deploy = onnx.load(output, load_external_data=False)
    record = read_deploy_record(deploy)
    assert record is not None and record.settings.detections_per_img == 600
    boxes = next(value for value in deploy.graph.output if value.name == "boxes")
    assert [dim.dim_value for dim in boxes.type.tensor_type.shape.dim] == [1, 600, 4]
