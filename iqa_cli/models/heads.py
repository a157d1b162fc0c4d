"""Per-layer heads that turn a squared feature difference into a one-channel distance map.

Module names mirror the released files: ``lin{k}.model.1.weight`` for the LPIPS linear head,
``lin{k}.model.{1,4}.weight`` for the Graphics-LPIPS MLP head (index 0 and 3 are Dropout).
"""

from __future__ import annotations

import torch
from torch import nn

HEAD_TYPES = ("lpips", "graphics")


class LinearHead(nn.Module):
    """LPIPS head: Dropout, 1x1 conv C->1 without bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MLPHead(nn.Module):
    """Graphics-LPIPS head: Dropout, 1x1 C->C, LeakyReLU(0.2), Dropout, 1x1 C->1 (no biases)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(
            nn.Dropout(),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.LeakyReLU(0.2),
            nn.Dropout(),
            nn.Conv2d(channels, 1, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def make_head(head_type: str, channels: int) -> nn.Module:
    if head_type == "lpips":
        return LinearHead(channels)
    if head_type == "graphics":
        return MLPHead(channels)
    raise ValueError(f"unknown head type {head_type!r}")


@torch.no_grad()
def clamp_nonnegative(heads: nn.Module) -> None:
    """Project every 1x1 conv weight onto >= 0, as both papers do after each optimiser step."""
    for module in heads.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
            module.weight.clamp_(min=0)
