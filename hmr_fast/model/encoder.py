"""The image encoder: a torchvision ResNet, global-average-pooled, classifier removed."""
from __future__ import annotations

import os

import torch
import torchvision
from torch import nn

BACKBONES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}


class Encoder(nn.Module):
    """ResNet features (B, feature_dim) of images (B, 3, H, W) normalised with ImageNet's
    mean and std. Weights start random; `pretrained` is a local torchvision checkpoint
    (e.g. resnet50-0676ba61.pth) loaded here; nothing is ever downloaded.
    """

    def __init__(self, backbone: str = "resnet50", pretrained=None):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
        net = getattr(torchvision.models, backbone)(weights=None)
        if pretrained:
            load_pretrained(net, pretrained)
        net.fc = nn.Identity()  # keep the global average pool, drop ImageNet's classifier
        self.net = net
        self.feature_dim = BACKBONES[backbone]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


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
