"""`write_deepstream(model, output)`: DeepStream's nvinfer config and a deepstream-app config for a deploy graph in
DeepStream's layout (`--layout deepstream`), which DeepStream's shipped `NvDsInferParseCustomMrcnnTLTV2` parses.

The layout (the deploy graph's outputs as TAO Mask R-CNN's engine gives them; DeepStream 7.1's parser, in
/opt/nvidia/deepstream/deepstream/lib/libnvds_infercustomparser.so, reads it as it is):

| | name | shape | |
|---|---|---|---|
| input | `images` | float32 [B,3,H,W] | RGB 0..255, normalised inside the graph (single input) |
| output | `generate_detections` | float32 [B,K,6] | y1, x1, y2, x2 (network-input pixels), class id, score; rows past the detections zero |
| | `mask_fcn_logits/BiasAdd` | float32 [B,K,C,M,M] | row k's mask (probabilities) in channel class_id[k], the other channels zero |

so the config says: no scaling or offsets (`net-scale-factor=1`, `offsets=0;0;0`, RGB), instance segmentation
(`network-type=3`, `output-instance-mask=1`), no clustering (`cluster-mode=4`: NMS is in the graph), C =
`num-detected-classes` (the parser's mask stride), the score threshold as `pre-cluster-threshold` (the parser reads
class 0's for every class) and the mask threshold 0.5 as `segmentation-threshold`. Written:

    OUTPUT/config_infer_primary_maskrt.txt    nvinfer ([property], [class-attrs-all])
    OUTPUT/deepstream_app_config.txt          deepstream-app: a file source, the model, OSD with masks, a file or screen sink
    OUTPUT/labels.txt                         one class name a line, by label id

Paths in the configs are relative to OUTPUT, as DeepStream resolves them. The folder appears whole or not at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from maskrt.contracts.errors import BadInput
from maskrt.contracts.files import check_input_path, check_new_folder, read_onnx, staged_folder
from maskrt.contracts.records import (
    DEEPSTREAM_LAYOUT,
    DEEPSTREAM_OUTPUTS,
    DEPLOY_KEY,
    read_deploy_record,
    read_precision_record,
)
from maskrt.runtime.backends import ModelInfo
from maskrt.serve import defaults

DETECTIONS, MASKS = DEEPSTREAM_OUTPUTS
PARSER = "NvDsInferParseCustomMrcnnTLTV2"
PARSER_LIBRARY = "/opt/nvidia/deepstream/deepstream/lib/libnvds_infercustomparser.so"
NVINFER_CONFIG = "config_infer_primary_maskrt.txt"
APP_CONFIG = "deepstream_app_config.txt"
LABELS = "labels.txt"
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
SINKS = defaults.DEEPSTREAM_SINKS
DEFAULT_SOURCE = defaults.DEEPSTREAM_SOURCE
# The keys of gst-nvinfer's config file in DeepStream 7.1 (sources/gst-plugins/gst-nvinfer/gstnvinfer_property_parser.h,
# and the Gst-nvinfer chapter of the DeepStream 7.1 guide), [property] and [class-attrs-*]: this writer uses no other.
NVINFER_PROPERTY_KEYS = frozenset(
    """gie-unique-id process-mode interval labelfile-path gpu-id secondary-reinfer-interval output-tensor-meta
    disable-output-host-copy auto-inc-mem max-gpu-mem-per enable-dla use-dla-core dump-input-tensor dump-output-tensor
    overwrite-input-tensor ip-tensor-file batch-size tensor-meta-pool-size network-mode model-engine-file
    int8-calib-file workspace-size output-blob-names is-classifier network-type force-implicit-batch-dim infer-dims
    output-io-formats layer-device-precision model-color-format net-scale-factor offsets mean-file
    maintain-aspect-ratio symmetric-padding scaling-filter scaling-compute-hw network-input-order
    input-tensor-from-meta custom-lib-path parse-bbox-func-name parse-bbox-instance-mask-func-name
    engine-create-func-name parse-classifier-func-name custom-network-config model-file proto-file uff-file
    uff-input-order input-dims uff-input-dims uff-input-blob-name tlt-encoded-model tlt-model-key onnx-file
    num-detected-classes enable-dbscan cluster-mode classifier-type classifier-threshold classifier-async-mode
    segmentation-threshold segmentation-output-order output-instance-mask input-object-min-width
    input-object-min-height input-object-max-width input-object-max-height operate-on-gie-id operate-on-class-ids
    filter-out-class-ids crop-objects-to-roi-boundary""".split()
)
NVINFER_CLASS_ATTRS_KEYS = frozenset(
    """threshold pre-cluster-threshold post-cluster-threshold eps group-threshold minBoxes dbscan-min-score
    roi-top-offset roi-bottom-offset detected-min-w detected-min-h detected-max-w detected-max-h border-color
    bg-color nms-iou-threshold topk""".split()
)


@dataclass(frozen=True)
class DeepStreamModel:
    """What the configs need to know of a deploy graph in DeepStream's layout."""

    graph: Path
    info: ModelInfo
    detections: int  # K
    precision: str


def read_deepstream_graph(model: Path) -> DeepStreamModel:
    """The deploy graph's record, which must say DeepStream's layout (surgery's `--layout deepstream`, which needs
    --plugins native); BadInput naming the file and what is not so."""
    if model.suffix != ".onnx":
        raise BadInput(f"{model}: expected the deploy graph (.onnx) that nvinfer builds or whose engine it loads (--engine)")
    graph = read_onnx(model, "a deploy graph in DeepStream's layout (.onnx, `--layout deepstream`)")
    record = read_deploy_record(graph, model)
    if record is None:
        raise BadInput(f"{model}: not a maskrt deploy graph (no {DEPLOY_KEY} metadata)")
    if record.layout != DEEPSTREAM_LAYOUT:
        raise BadInput(
            f"{model}: not in DeepStream's layout; nvinfer's {PARSER} reads one input and the outputs "
            f"'{DETECTIONS}' and '{MASKS}': convert with --plugins native --layout deepstream"
        )
    precision = read_precision_record(graph, model)
    info = ModelInfo.of(record, precision.precision if precision else "fp32", single_input=True)
    return DeepStreamModel(graph=model, info=info, detections=record.settings.detections_per_img, precision=info.precision)


def nvinfer_config(model: DeepStreamModel, folder: Path, engine: Path | None, score_threshold: float) -> dict[str, dict[str, str]]:
    """The nvinfer config's groups and keys (module docstring), paths relative to `folder`."""
    info = model.info
    height, width = info.input_size
    prop = {
        "gpu-id": "0",
        "net-scale-factor": "1.0",
        "offsets": "0;0;0",
        "model-color-format": "0",
        "onnx-file": os.path.relpath(model.graph.resolve(), folder.resolve()),
        "labelfile-path": LABELS,
        "infer-dims": f"3;{height};{width}",
        "batch-size": str(info.batch),
        "network-mode": str(NETWORK_MODE.get(model.precision, 0)),
        "network-type": "3",
        "num-detected-classes": str(info.num_classes),
        "cluster-mode": "4",
        "maintain-aspect-ratio": "1",
        "symmetric-padding": "0",
        "interval": "0",
        "gie-unique-id": "1",
        "output-instance-mask": "1",
        "segmentation-threshold": "0.5",
        "output-blob-names": f"{DETECTIONS};{MASKS}",
        "parse-bbox-instance-mask-func-name": PARSER,
        "custom-lib-path": PARSER_LIBRARY,
    }
    if engine is not None:
        prop["model-engine-file"] = os.path.relpath(engine.resolve(), folder.resolve())
    return {"property": prop, "class-attrs-all": {"pre-cluster-threshold": _number(score_threshold), "topk": str(model.detections)}}


def app_config(model: DeepStreamModel, source: str, sink: str, output_video: str) -> dict[str, dict[str, str]]:
    """deepstream-app's groups: one file source, the model as primary GIE, OSD drawing masks, and the sink."""
    batch = model.info.batch
    sinks = {
        "file": {"enable": "1", "type": "3", "container": "1", "codec": "1", "enc-type": "0", "sync": "0",
                 "bitrate": "4000000", "output-file": output_video, "source-id": "0"},
        "screen": {"enable": "1", "type": "2", "sync": "1", "source-id": "0", "gpu-id": "0"},
        "fake": {"enable": "1", "type": "1", "sync": "0", "source-id": "0"},
    }  # fmt: skip
    return {
        "application": {"enable-perf-measurement": "1", "perf-measurement-interval-sec": "5"},
        "tiled-display": {"enable": "0"},
        "source0": {"enable": "1", "type": "3", "uri": source, "num-sources": "1", "gpu-id": "0"},
        "streammux": {"gpu-id": "0", "live-source": "0", "batch-size": str(batch), "batched-push-timeout": "40000",
                      "width": "1920", "height": "1080", "enable-padding": "0"},  # fmt: skip
        "sink0": sinks[sink],
        "osd": {"enable": "1", "gpu-id": "0", "border-width": "2", "text-size": "15", "text-color": "1;1;1;1",
                "text-bg-color": "0.3;0.3;0.3;1", "font": "Serif", "display-mask": "1", "display-bbox": "1", "display-text": "1"},  # fmt: skip
        "primary-gie": {"enable": "1", "gpu-id": "0", "gie-unique-id": "1", "batch-size": str(batch), "config-file": NVINFER_CONFIG},
        "tests": {"file-loop": "0"},
    }


def _number(value: float) -> str:
    return f"{value:g}"


def format_config(groups: dict[str, dict[str, str]], header: str) -> str:
    """GLib key-file text, as DeepStream reads its configs."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for group, keys in groups.items():
        lines += ["", f"[{group}]", *(f"{key}={value}" for key, value in keys.items())]
    return "\n".join(lines) + "\n"


def write_deepstream(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    engine: str | os.PathLike[str] | None = None,
    source: str = DEFAULT_SOURCE,
    sink: str = "file",
    score_threshold: float = 0.5,
    console: Console | None = None,
) -> Path:
    """Writes OUTPUT/ (module docstring) for `model`, a deploy graph in DeepStream's layout, and `engine` when given
    (nvinfer builds one from the graph otherwise). `source` is deepstream-app's URI; `sink` "file" (OUTPUT/out.mp4),
    "screen" or "fake". ValueError naming the file or argument and what is wrong; nothing is written then."""
    graph = Path(model)
    folder = Path(output)
    if sink not in SINKS:
        raise BadInput(f"--sink {sink!r}: one of {', '.join(SINKS)}")
    if not 0.0 < score_threshold <= 1.0:
        raise BadInput(f"--score-threshold {score_threshold}: above 0 and at most 1 (the parser keeps rows scoring at least it)")
    if "://" not in source:
        raise BadInput(f"--source {source!r}: a URI (file:///path/video.mp4, rtsp://...)")
    described = read_deepstream_graph(graph)
    engine_path = Path(engine) if engine is not None else None
    if engine_path is not None:
        check_input_path(engine_path, "a TensorRT engine (.engine)")
        if engine_path.suffix != ".engine":
            raise BadInput(f"{engine_path}: expected a TensorRT engine (.engine)")
    check_new_folder(folder)
    with staged_folder(folder) as staging:
        header = f"maskrt: {graph.name} ({described.info.precision}, batch {described.info.batch}, {described.info.input_size[0]}x{described.info.input_size[1]})"
        nvinfer = nvinfer_config(described, folder, engine_path, score_threshold)
        (staging / NVINFER_CONFIG).write_text(
            format_config(nvinfer, f"{header}: nvinfer reads it with DeepStream's {PARSER}\nDeepStream 7.1")
        )
        (staging / APP_CONFIG).write_text(
            format_config(app_config(described, source, sink, "out.mp4"), f"{header}\ndeepstream-app -c {APP_CONFIG}")
        )
        names = [described.info.class_name(label) for label in range(described.info.num_classes)]
        (staging / LABELS).write_text("\n".join(names) + "\n")
    if console is not None:
        console.print(f"wrote {folder}/: {NVINFER_CONFIG}, {APP_CONFIG}, {LABELS} (deepstream-app -c {folder / APP_CONFIG})")
    return folder


def read_config(path: Path) -> dict[str, dict[str, str]]:
    """A DeepStream key-file config back as groups of keys (for checks and tests)."""
    groups: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = groups.setdefault(line[1:-1], {})
        elif current is not None and "=" in line:
            key, value = line.split("=", 1)
            current[key.strip()] = value.strip()
    return groups
