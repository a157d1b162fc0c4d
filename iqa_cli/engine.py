"""The streaming scorer: the one place that decides devices, batches, workers and precision."""

from __future__ import annotations

import torch

from .errors import InvalidInputError


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """'auto' picks the first CUDA device when there is one, else the CPU."""
    if isinstance(spec, torch.device):
        return spec
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidInputError(f"--device {spec}: no CUDA device is visible here (use --device cpu or auto)")
        device = torch.device(text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidInputError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return device
    raise InvalidInputError(f"--device {spec}: expected auto, cpu, cuda or cuda:K")
