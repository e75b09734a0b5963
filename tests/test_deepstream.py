"""DeepStream (maskrt.serve.deepstream): a deploy graph in DeepStream's layout, read step by step as DeepStream's
shipped NvDsInferParseCustomMrcnnTLTV2 reads it, gives the Predictor's detections; the nvinfer config written for it
uses only keys that DeepStream 7.1 documents, with the values the parser and the graph need; bad inputs are refused
in one line and leave nothing behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from maskrt.cli.main import main as maskrt
from maskrt.runtime.backends import open_backend
from maskrt.runtime.predictor import Predictor
from maskrt.serve.deepstream import APP_CONFIG, LABELS, NVINFER_CONFIG, read_config, write_deepstream

from deepstream_support import parse_like_deepstream

# DeepStream 7.1's nvinfer config keys, [property] and [class-attrs-*]: the Gst-nvinfer chapter's "configuration
# file" tables and gst-nvinfer's gstnvinfer_property_parser.h (listed here by hand, not taken from the writer).
DOCUMENTED_PROPERTY = set(
    """num-detected-classes net-scale-factor model-file proto-file int8-calib-file batch-size model-engine-file
    uff-file onnx-file enable-dbscan labelfile-path mean-file gie-unique-id operate-on-gie-id operate-on-class-ids
    interval input-object-min-width input-object-min-height input-object-max-width input-object-max-height uff-input-dims
    network-mode offsets output-blob-names parse-bbox-func-name parse-bbox-instance-mask-func-name custom-lib-path
    model-color-format classifier-async-mode process-mode classifier-threshold uff-input-blob-name
    secondary-reinfer-interval output-tensor-meta output-instance-mask enable-dla use-dla-core network-type
    maintain-aspect-ratio symmetric-padding parse-classifier-func-name custom-network-config tlt-encoded-model
    tlt-model-key segmentation-threshold segmentation-output-order workspace-size force-implicit-batch-dim infer-dims
    engine-create-func-name cluster-mode filter-out-class-ids scaling-filter scaling-compute-hw output-io-formats
    layer-device-precision network-input-order classifier-type crop-objects-to-roi-boundary gpu-id""".split()
)
DOCUMENTED_CLASS_ATTRS = set(
    """threshold pre-cluster-threshold post-cluster-threshold eps group-threshold minBoxes dbscan-min-score
    nms-iou-threshold topk roi-top-offset roi-bottom-offset detected-min-w detected-max-w detected-min-h
    detected-max-h""".split()
)
# deepstream-app's configuration groups (the reference application's chapter of the same guide).
DOCUMENTED_APP_GROUPS = {"application", "tiled-display", "source0", "streammux", "sink0", "osd", "primary-gie", "tests"}


@pytest.fixture(scope="module")
def single_input(shapes_demo_graph: Callable[..., Path]) -> Path:
    return shapes_demo_graph(1, "native", "--single-input")


@pytest.fixture(scope="module")
def layout(shapes_demo_graph: Callable[..., Path]) -> Path:
    """The same model in DeepStream's layout, as surgery makes it (`--layout deepstream`)."""
    return shapes_demo_graph(1, "native", "--layout", "deepstream")


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """shapes val images at the model's own 128x128: they fill the canvas, as frames must for a single-input graph."""
    folder = tmp_path_factory.mktemp("deepstream-frames")
    assert maskrt(["shapes", "--count", "6", "--seed", "1", "-o", str(folder)]) == 0
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted((folder / "images").glob("*.png"))]


def test_the_shipped_parsers_steps_on_the_layout_give_the_predictors_detections(
    single_input: Path, layout: Path, frames: list[np.ndarray], tmp_path: Path
) -> None:
    folder = write_deepstream(layout, tmp_path / "ds")
    config = read_config(folder / NVINFER_CONFIG)
    classes = int(config["property"]["num-detected-classes"])
    threshold = float(config["class-attrs-all"]["pre-cluster-threshold"])
    channels, height, width = (int(v) for v in config["property"]["infer-dims"].split(";"))
    assert (channels, height, width) == (3, 128, 128)
    predictor = Predictor(single_input, score_threshold=threshold)
    backend = open_backend(single_input)
    session = ort.InferenceSession(str(layout), providers=["CPUExecutionProvider"])
    found_any = 0
    for index, frame in enumerate(frames):
        # nvinfer's input: RGB 0..255 scaled to infer-dims (the frame is 128x128 already), y = 1.0 * (x - 0)
        images = frame.transpose(2, 0, 1)[None].astype(np.float32) * float(config["property"]["net-scale-factor"])
        detections, masks = session.run(None, {"images": images})
        parsed = parse_like_deepstream({"generate_detections": detections[0], "mask_fcn_logits/BiasAdd": masks[0]},
                                       (height, width), classes, threshold)  # fmt: skip
        expected = predictor(frame)
        assert not isinstance(expected, list)
        raw = backend.run({"images": images, "image_sizes": np.array([[height, width]], np.int32)})
        keep = np.flatnonzero(raw["scores"][0, : int(raw["num_detections"][0, 0])] >= threshold)
        assert len(parsed) == len(expected) == len(keep), f"frame {index}"
        found_any += len(parsed)
        for obj, box, label, score, name, row in zip(parsed, expected.boxes, expected.labels, expected.scores, expected.class_names, keep):
            x1, y1, x2, y2 = (float(v) for v in box)
            assert obj.class_id == int(label) and abs(obj.confidence - float(score)) <= 1e-6, f"frame {index}"
            assert (obj.left, obj.top) == pytest.approx((x1, y1), abs=1e-4)
            assert obj.width == pytest.approx(min(x2, width - 1) - x1, abs=1e-4) and obj.height == pytest.approx(min(y2, height - 1) - y1, abs=1e-4)
            # the layout graph and the backend are two ONNX Runtime sessions, optimised apart: a few ulp of a sigmoid
            difference = float(np.abs(obj.mask - raw["masks"][0, row]).max())
            assert difference <= 1e-4, f"frame {index}: the mask of {name} differs by {difference}"
        labels = (folder / LABELS).read_text().splitlines()
        assert [labels[o.class_id] for o in parsed] == expected.class_names
    assert found_any >= len(frames)


def test_the_configs_use_documented_keys_with_the_values_the_parser_needs(layout: Path, tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not read by the writer")
    folder = write_deepstream(layout, tmp_path / "ds", engine=engine, sink="screen", score_threshold=0.6)
    config = read_config(folder / NVINFER_CONFIG)
    assert set(config) == {"property", "class-attrs-all"}
    assert set(config["property"]) <= DOCUMENTED_PROPERTY, set(config["property"]) - DOCUMENTED_PROPERTY
    assert set(config["class-attrs-all"]) <= DOCUMENTED_CLASS_ATTRS
    prop = config["property"]
    assert prop["network-type"] == "3" and prop["output-instance-mask"] == "1" and prop["cluster-mode"] == "4"
    assert prop["output-blob-names"] == "generate_detections;mask_fcn_logits/BiasAdd"
    assert prop["parse-bbox-instance-mask-func-name"] == "NvDsInferParseCustomMrcnnTLTV2"
    assert prop["custom-lib-path"].endswith("/libnvds_infercustomparser.so")
    assert (prop["net-scale-factor"], prop["offsets"], prop["model-color-format"]) == ("1.0", "0;0;0", "0")
    assert (prop["batch-size"], prop["num-detected-classes"], prop["network-mode"]) == ("1", "4", "0")
    assert (folder / prop["onnx-file"]).resolve() == layout.resolve()
    assert (folder / prop["model-engine-file"]).resolve() == engine.resolve()
    assert config["class-attrs-all"]["pre-cluster-threshold"] == "0.6"
    assert (folder / LABELS).read_text().splitlines() == ["__background__", "circle", "square", "triangle"]
    app = read_config(folder / APP_CONFIG)
    assert set(app) == DOCUMENTED_APP_GROUPS
    assert app["primary-gie"]["config-file"] == NVINFER_CONFIG and app["sink0"]["type"] == "2"
    assert app["osd"]["display-mask"] == "1"


def test_bad_inputs_are_refused_in_one_line_and_nothing_is_written(single_input: Path, layout: Path, tmp_path: Path) -> None:
    output = tmp_path / "ds"
    cases = [
        (dict(model=single_input), "not in DeepStream's layout"),
        (dict(model=tmp_path / "missing.onnx"), "file not found"),
        (dict(model=layout, sink="window"), "--sink"),
        (dict(model=layout, score_threshold=0.0), "--score-threshold"),
        (dict(model=layout, engine=tmp_path / "missing.engine"), "file not found"),
        (dict(model=layout, source="video.mp4"), "--source"),
    ]
    for arguments, says in cases:
        with pytest.raises(ValueError, match=says) as refused:
            write_deepstream(output=output, **arguments)  # type: ignore[arg-type]
        assert "\n" not in str(refused.value)
        assert not output.exists() and [p.name for p in tmp_path.iterdir()] == [], f"{arguments}: left {list(tmp_path.iterdir())}"
    output.mkdir()
    (output / "other.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        write_deepstream(layout, output)
    assert [p.name for p in output.iterdir()] == ["other.txt"]


def test_the_command_line_arguments_map_onto_the_writer(layout: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    assert maskrt(["deepstream", str(layout), "-o", str(folder), "--sink", "fake", "--score-threshold", "0.7"]) == 0
    assert read_config(folder / NVINFER_CONFIG)["class-attrs-all"]["pre-cluster-threshold"] == "0.7"
    assert read_config(folder / APP_CONFIG)["sink0"]["type"] == "1"


def test_the_layout_is_for_deepstream_only(layout: Path, shapes_demo_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Surgery makes it only of native graphs (nvinfer's TensorRT cannot load maskrt's Python plugins), and the
    runtime, which answers in maskrt's layout, refuses it in one line."""
    output = tmp_path / "deploy.onnx"
    argv = ["convert", str(shapes_demo_export), "--surgery-only", "--layout", "deepstream", "-o", str(output)]
    assert maskrt(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "--layout deepstream is for DeepStream's nvinfer" in line and "--plugins native" in line
    assert not output.exists()
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((128, 128, 3), 90, np.uint8))
    assert maskrt(["infer", str(layout), str(image), "-o", str(tmp_path / "out")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "has DeepStream's outputs (--layout deepstream)" in line
