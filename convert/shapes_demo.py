"""shapes-demo: the small Mask R-CNN that ships with maskrt, trained on the synthetic shapes dataset (calib/shapes.py).

It is the stock torchvision MaskRCNN, so export and surgery treat it like any user's model: a ResNet with one basic
block per stage (ResNet-10) under a 4-level FPN, with anchors, heads and the resize transform sized for 128-pixel
images. BatchNorm is trainable (FrozenBatchNorm cannot learn from scratch); in eval mode it is a per-channel affine.
scripts/train_shapes.py trains it; weights/shapes_demo.md is its model card.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.resnet import BasicBlock, ResNet

from maskrt.calib.shapes import CATEGORIES

CHECKPOINT = Path(__file__).parent / "weights" / "shapes_demo.safetensors"
METRICS = CHECKPOINT.with_suffix(".json")  # val AP and how the checkpoint was trained, read by the model card's test
CLASS_NAMES = ["__background__", *CATEGORIES.values()]
INPUT_SIZE = 128  # the dataset's image side; the transform keeps images at this size

FPN_CHANNELS = 64
BOX_HEAD_CHANNELS = 256
MASK_HEAD_CHANNELS = 32
MASK_HEAD_LAYERS = 4


def build_model() -> MaskRCNN:
    """shapes-demo with random weights, in train mode (torchvision's default)."""
    body = ResNet(BasicBlock, [1, 1, 1, 1], norm_layer=nn.BatchNorm2d)
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[64, 128, 256, 512],
        out_channels=FPN_CHANNELS,
    )
    # Shapes span about 10 to 64 pixels; one anchor size per level (strides 4..64), as torchvision's ResNet-FPN does.
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 5)
    box_pool_size = 7
    return MaskRCNN(
        backbone,
        min_size=INPUT_SIZE,
        max_size=INPUT_SIZE,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(FPN_CHANNELS, anchors.num_anchors_per_location()[0]),
        # At most six shapes an image: far fewer proposals and sampled RoIs than COCO's defaults suffice.
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=200,
        box_batch_size_per_image=64,
        box_head=TwoMLPHead(FPN_CHANNELS * box_pool_size**2, BOX_HEAD_CHANNELS),
        box_predictor=FastRCNNPredictor(BOX_HEAD_CHANNELS, len(CLASS_NAMES)),
        mask_head=MaskRCNNHeads(FPN_CHANNELS, [MASK_HEAD_CHANNELS] * MASK_HEAD_LAYERS, 1),
        mask_predictor=MaskRCNNPredictor(MASK_HEAD_CHANNELS, MASK_HEAD_CHANNELS, len(CLASS_NAMES)),
    )
