"""torchvision Mask R-CNN architectures by name, and their weights from a state_dict or safetensors file."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.ops import MultiScaleRoIAlign

from maskrt.contracts.errors import BadInput
from maskrt.contracts.files import check_input_path
from maskrt.contracts.layers import CLASS_LOGITS

SHAPES_DEMO = "shapes-demo"
COCO_NUM_CLASSES = 91
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL = b"\x80"  # the PROTO opcode that starts every pickle of protocol 2 or later


def build_model(name: str, num_classes: int) -> MaskRCNN:
    """An untrained Mask R-CNN of the named architecture, in eval mode.

    Names: maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2, maskrcnn_<backbone>_fpn for another torchvision ResNet
    (resnet18, resnext50_32x4d, ...) or MobileNetV3 (mobilenet_v3_large, mobilenet_v3_small), and shapes-demo.
    """
    if name == SHAPES_DEMO:
        from maskrt.convert import shapes_demo

        return shapes_demo.build_model().eval()
    if name == "maskrcnn_resnet50_fpn":
        return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes).eval()
    if name == "maskrcnn_resnet50_fpn_v2":
        return maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=num_classes).eval()
    backbone_name = name.removeprefix("maskrcnn_").removesuffix("_fpn")
    if not (name.startswith("maskrcnn_") and name.endswith("_fpn")):
        raise BadInput(f"unknown model '{name}': expected maskrcnn_<backbone>_fpn or {SHAPES_DEMO}")
    if backbone_name.startswith("mobilenet_v3"):
        return _mobilenet_maskrcnn(backbone_name, num_classes).eval()
    try:
        backbone = resnet_fpn_backbone(backbone_name=backbone_name, weights=None)
    except (KeyError, ValueError, AttributeError):
        raise BadInput(f"unknown model '{name}': '{backbone_name}' is not a torchvision ResNet or MobileNetV3") from None
    return MaskRCNN(backbone, num_classes=num_classes).eval()


def _mobilenet_maskrcnn(backbone_name: str, num_classes: int) -> MaskRCNN:
    # As torchvision's fasterrcnn_mobilenet_v3_large_fpn: two feature maps (strides 16, 32) plus the pool level,
    # five anchor sizes at every level, and RoI pooling over the two feature maps.
    backbone = mobilenet_backbone(backbone_name=backbone_name, weights=None, fpn=True, trainable_layers=6)
    levels = 3
    anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * levels, ((0.5, 1.0, 2.0),) * levels)
    return MaskRCNN(
        backbone,
        num_classes=num_classes,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0", "1"], output_size=7, sampling_ratio=2),
        mask_roi_pool=MultiScaleRoIAlign(["0", "1"], output_size=14, sampling_ratio=2),
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a torchvision state_dict (.pth/.pt, loaded with weights_only=True) or a .safetensors file."""
    check_input_path(path, "a weights file (.pth, .pt or .safetensors)")
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
    else:
        state = _read_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # training checkpoints often wrap the state_dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInput(f"{path}: expected a state_dict of tensors, found {type(state).__name__}")
    return state


def _read_checkpoint(path: Path) -> object:
    with path.open("rb") as file:
        head = file.read(4)
    # torch.save writes a zip archive; before PyTorch 1.6 (and with _use_new_zipfile_serialization=False) a pickle.
    if head != ZIP_MAGIC and not head.startswith(PICKLE_PROTOCOL):
        raise BadInput(f"{path}: not a PyTorch checkpoint (a zip or pickle file written by torch.save)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a pickle-format checkpoint warns that the format is legacy
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise BadInput(
            f"{path}: holds Python objects other than tensors, which maskrt does not unpickle "
            "(torch.load with weights_only=True); save the model's state_dict() instead"
        ) from None
    except Exception as error:  # torch.load raises a different type for each way a file can be damaged
        raise BadInput(f"{path}: not a readable PyTorch checkpoint{_reason(error)}") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    # The format: an 8-byte little-endian header length, then that many bytes of JSON.
    with path.open("rb") as file:
        size, header = file.read(8), file.read(1)
    if len(size) < 8 or header != b"{" or int.from_bytes(size, "little") > path.stat().st_size - 8:
        raise BadInput(f"{path}: not a safetensors file (an 8-byte header length, then a JSON header)")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise BadInput(f"{path}: not a readable safetensors file{_reason(error)}") from None


def _reason(error: Exception) -> str:
    """The library's message, whole, after a colon; nothing when it is empty or runs over several lines."""
    message = str(error).strip()
    return f": {message}" if message and "\n" not in message else ""


def num_classes_in(state: dict[str, torch.Tensor]) -> int | None:
    weight = state.get(f"{CLASS_LOGITS}.weight")
    return None if weight is None else int(weight.shape[0])


def load_weights(model: MaskRCNN, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """Strictly loads `state` (read from `path`) into `model`, explaining a mismatch in one line."""
    expected = model.state_dict()
    # Checkpoints of frozen-BatchNorm models carry no num_batches_tracked; nothing reads it in eval mode.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
                parts.append(f"{len(keys)} {label} ({shown})")
        raise BadInput(f"{path}: not weights for {name}: {'; '.join(parts)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=False)


def load_model(name: str, weights: Path | None, num_classes: int | None, seed: int = 0) -> MaskRCNN:
    """The named architecture with `weights`, or with random weights from `seed` when none are given.

    shapes-demo loads the checkpoint that ships with maskrt unless other weights are given.
    """
    if name == SHAPES_DEMO and weights is None:
        from maskrt.convert import shapes_demo

        weights = shapes_demo.CHECKPOINT
    state = read_state_dict(weights) if weights is not None else None
    in_weights = num_classes_in(state) if state else None
    if num_classes is not None and in_weights is not None and num_classes != in_weights:
        raise BadInput(
            f"--num-classes {num_classes}: {weights} holds a box predictor for {in_weights} classes (background "
            f"included); give --num-classes {in_weights} or leave it out"
        )
    classes = num_classes if num_classes is not None else in_weights or COCO_NUM_CLASSES
    torch.manual_seed(seed)
    model = build_model(name, classes)
    if state is not None and weights is not None:
        load_weights(model, state, weights, name)
    return model.eval()
