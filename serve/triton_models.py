"""The Python-backend models of a repository that `write_triton_repository` writes; each model's model.py imports one
class from here (so Triton's Python needs maskrt: `pip install maskrt`, and maskrt[tensorrt] for engines).

- `PreprocessModel` (maskrt_preprocess): encoded images or RGB arrays → the deploy graph's `images` (letterboxed,
  batch padded as the Predictor pads it) and `image_sizes`, and each image's `original_sizes`;
- `PostprocessModel` (maskrt_postprocess): the graph's five outputs → serve.protocol's detections (boxes back in the
  image's pixels, masks pasted and encoded as COCO RLE), as the Predictor's detections_from_outputs makes them;
- `PredictorModel` (maskrt, plugin-mode graphs and engines): the Predictor itself, requests and responses as
  `maskrt serve`'s.

Each model reads its settings from maskrt.json in its version folder. A request that cannot be answered gets an
error response of its own; the other requests of the batch are answered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from maskrt.contracts.errors import BadInput
from maskrt.runtime.backends import ModelInfo
from maskrt.runtime.predictor import Predictor, batch_feeds, detections_from_outputs
from maskrt.runtime.preprocess import letterbox, letterbox_geometry
from maskrt.serve import protocol

SETTINGS_FILE = "maskrt.json"
GRAPH_OUTPUTS = ("num_detections", "boxes", "scores", "classes", "masks")


def model_settings(args: dict[str, str]) -> dict[str, Any]:
    """maskrt.json of the model version Triton is loading (args: TritonPythonModel.initialize's)."""
    folder = Path(args["model_repository"]) / args["model_version"]
    settings: dict[str, Any] = json.loads((folder / SETTINGS_FILE).read_text())
    settings["folder"] = str(folder)
    return settings


def model_info(settings: dict[str, Any]) -> ModelInfo:
    """The ModelInfo that maskrt.json holds (its lists back to tuples)."""
    values: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value for key, value in settings["info"].items()}
    return ModelInfo(**values)


def _inputs(request: Any, names: tuple[str, ...]) -> dict[str, np.ndarray | None]:
    import triton_python_backend_utils as pb_utils

    values: dict[str, np.ndarray | None] = {}
    for name in names:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        values[name] = None if tensor is None else tensor.as_numpy()
    return values


def _response(outputs: dict[str, np.ndarray]) -> Any:
    import triton_python_backend_utils as pb_utils

    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items()])


def _error(message: str) -> Any:
    import triton_python_backend_utils as pb_utils

    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


class PreprocessModel:
    def initialize(self, args: dict[str, str]) -> None:
        settings = model_settings(args)
        self.info = model_info(settings)
        self.max_pixels = int(settings["max_image_pixels"])
        self.images_dtype = np.dtype(settings["images_dtype"])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                images = protocol.request_images(_inputs(request, (protocol.IMAGE_INPUT, protocol.PIXELS_INPUT)), self.max_pixels)
                if len(images) > self.info.batch:
                    raise BadInput(f"{len(images)} images in one request; this model's batch holds {self.info.batch}")
                prepared = [letterbox(image, self.info.input_size, self.info.image_mean) for image in images]
                feeds = batch_feeds(prepared, self.info)
            except BadInput as error:
                responses.append(_error(str(error)))
                continue
            responses.append(
                _response(
                    {
                        "images": feeds["images"].astype(self.images_dtype),
                        "image_sizes": feeds["image_sizes"],
                        "original_sizes": np.array([box.original for _, box in prepared], np.int32).reshape(-1, 2),
                    }
                )
            )
        return responses


class PostprocessModel:
    def initialize(self, args: dict[str, str]) -> None:
        settings = model_settings(args)
        self.info = model_info(settings)
        self.score_threshold = float(settings["score_threshold"])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            values = _inputs(request, (*GRAPH_OUTPUTS, "image_sizes", "original_sizes"))
            missing = [name for name, value in values.items() if value is None]
            if missing:
                responses.append(_error(f"missing input(s) {', '.join(missing)}"))
                continue
            outputs = {name: np.asarray(values[name]) for name in GRAPH_OUTPUTS}
            outputs["boxes"] = outputs["boxes"].astype(np.float32)
            outputs["scores"] = outputs["scores"].astype(np.float32)
            found = []
            for index, original in enumerate(np.asarray(values["original_sizes"]).reshape(-1, 2)):
                box = letterbox_geometry((int(original[0]), int(original[1])), self.info.input_size)
                found.append(detections_from_outputs(outputs, index, box, self.info, self.score_threshold))
            responses.append(_response(protocol.detections_outputs(found, full_masks=False)))
        return responses


class PredictorModel:
    def initialize(self, args: dict[str, str]) -> None:
        settings = model_settings(args)
        options: dict[str, Any] = {} if settings["model_file"].endswith(".engine") else {"device": settings.get("device", "auto")}
        if settings.get("threads") is not None and "device" in options:
            options["threads"] = int(settings["threads"])
        self.predictor = Predictor(Path(settings["folder"]) / settings["model_file"], score_threshold=float(settings["score_threshold"]), **options)
        self.max_pixels = int(settings["max_image_pixels"])

    def execute(self, requests: list[Any]) -> list[Any]:
        parsed: list[list[np.ndarray] | str] = []
        for request in requests:
            try:
                parsed.append(protocol.request_images(_inputs(request, (protocol.IMAGE_INPUT, protocol.PIXELS_INPUT)), self.max_pixels))
            except BadInput as error:
                parsed.append(str(error))
        flat = [image for images in parsed if not isinstance(images, str) for image in images]
        found = self.predictor(flat) if flat else []
        assert isinstance(found, list)
        responses, start = [], 0
        for request, images in zip(requests, parsed):
            if isinstance(images, str):
                responses.append(_error(images))
                continue
            full = protocol.FULL_MASKS in set(request.requested_output_names())
            responses.append(_response(protocol.detections_outputs(found[start : start + len(images)], full)))
            start += len(images)
        return responses
