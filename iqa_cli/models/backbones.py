"""ImageNet backbones cut into the feature taps LPIPS reads (ReLU outputs).

Each tap is an ``nn.Sequential`` named ``slice{n}`` holding the torchvision ``features``
modules under their original indices, so a state dict has keys ``slice{n}.{i}.weight`` --
the layout the original LPIPS and Graphics-LPIPS checkpoints use under their ``net.`` prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    torchvision_builder: str  # attribute of torchvision.models
    weights_enum: str  # attribute of torchvision.models holding the WeightsEnum
    slices: tuple[tuple[int, int], ...]  # [start, stop) ranges of `features`
    channels: tuple[int, ...]
    min_size: int  # smallest H and W whose deepest tap is still at least 1x1


BACKBONES: dict[str, BackboneSpec] = {
    "alex": BackboneSpec(
        "alex", "alexnet", "AlexNet_Weights",
        ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)),
        (64, 192, 384, 256, 256), 31,
    ),
    "vgg": BackboneSpec(
        "vgg", "vgg16", "VGG16_Weights",
        ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)),
        (64, 128, 256, 512, 512), 16,
    ),
    "squeeze": BackboneSpec(
        "squeeze", "squeezenet1_1", "SqueezeNet1_1_Weights",
        ((0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13)),
        (64, 128, 256, 384, 384, 512, 512), 17,
    ),
}
NET_ALIASES = {"alexnet": "alex", "vgg16": "vgg", "squeezenet": "squeeze", "squeezenet1_1": "squeeze"}


def torchvision_features(spec: BackboneSpec) -> nn.Sequential:
    """The torchvision ``features`` stack, freshly initialised (weights are loaded separately).

    The classifier is built on the meta device and never materialised: for vgg16 it would be
    ~550 MB of parameters allocated and randomly initialised only to be thrown away.
    """
    import torchvision.models as tvm

    builder: Callable[..., nn.Module] = getattr(tvm, spec.torchvision_builder)
    with torch.device("meta"):
        features = builder(weights=None).features
    features = features.to_empty(device="cpu")
    for module in features.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()  # PyTorch's default initialisation of each conv
    return features


class Backbone(nn.Module):
    """Runs the feature stack and returns the tap after every slice."""

    def __init__(self, spec: BackboneSpec, features: nn.Sequential | None = None):
        super().__init__()
        self.spec = spec
        features = features if features is not None else torchvision_features(spec)
        for n, (start, stop) in enumerate(spec.slices, start=1):
            block = nn.Sequential()
            for i in range(start, stop):
                block.add_module(str(i), features[i])
            setattr(self, f"slice{n}", block)
        self.n_taps = len(spec.slices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for n in range(1, self.n_taps + 1):
            x = getattr(self, f"slice{n}")(x)
            taps.append(x)
        return taps

    def load_torchvision_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a torchvision classifier state dict (``features.{i}.*`` keys; others ignored)."""
        index_to_slice = {
            i: n for n, (start, stop) in enumerate(self.spec.slices, start=1) for i in range(start, stop)
        }
        mapped = {}
        for key, value in state.items():
            parts = key.split(".")
            if parts[0] != "features":
                continue  # classifier weights: not part of the taps
            idx = int(parts[1])
            if idx in index_to_slice:
                mapped[f"slice{index_to_slice[idx]}." + ".".join(parts[1:])] = value
        from ..weights import load_strict

        load_strict(self, mapped, source="torchvision backbone weights")
