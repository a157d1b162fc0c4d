"""The one calling convention every quality model in the registry follows.

    fr_metric(ref, dist) -> (N,) scores       full-reference: ``ref`` first, then the distorted image
    nr_metric(img)       -> (N,) scores       no-reference

Inputs are anything io/inputs.py accepts (tensors, numpy arrays, PIL images, paths, lists);
subclasses implement ``score`` on float (N, 3, H, W) tensors in [0, 1] already on the metric's
device. Each metric says which way its scores point (``lower_better``) and what it is (``kind``).

By default a call runs without autograd, so scoring a folder never builds a graph; a metric used
as a training loss keeps gradients with ``create_metric(..., as_loss=True)``, ``metric.as_loss()``
or, for one block, ``with metric.gradients(): ...``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from ..engine import autocast
from ..errors import InvalidInputError
from ..io.inputs import parse_input_range, to_image_batch

KINDS = ("fr", "nr")


class QualityMetric(nn.Module):
    """Base of every registered metric. Subclasses set ``name``, ``kind``, ``lower_better`` and
    implement ``score``; they may override ``describe`` and ``meta`` (what the CLI prints)."""

    name: str = ""
    kind: str = "fr"
    lower_better: bool = True
    makes_maps = False  # True where score_with_maps(ref, dist) gives per-pixel maps
    patch_score_cap: float | None = None  # a database of patches averages min(score, cap) per stimulus
    # --precision fp16|bf16 applies (engine.autocast): deep networks only; statistics stay in fp32
    half_precision = False

    def __init__(self) -> None:
        super().__init__()
        self.input_range: tuple[float, float] = (0.0, 1.0)
        self.keep_gradients = False

    # -- configuration ---------------------------------------------------------------------------
    def set_input_range(self, value: str | tuple[float, float] | None) -> "QualityMetric":
        """Accept '[-1,1]' or '[0,255]' float images (converted); '[0,1]' is the default."""
        self.input_range = parse_input_range(value)
        return self

    def as_loss(self, enabled: bool = True) -> "QualityMetric":
        """Keep autograd on in every call (for use as a training loss)."""
        self.keep_gradients = bool(enabled)
        return self

    @contextlib.contextmanager
    def gradients(self) -> Iterator["QualityMetric"]:
        """Keep autograd on for the calls made inside the block."""
        before = self.keep_gradients
        self.keep_gradients = True
        try:
            yield self
        finally:
            self.keep_gradients = before

    @property
    def device(self) -> torch.device:
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return getattr(self, "_device", torch.device("cpu"))

    def _apply(self, fn, *args, **kwargs):
        # metrics without tensors (PSNR, SSIM, ...) still remember where .to() sent them
        result = super()._apply(fn, *args, **kwargs)
        probe = fn(torch.empty(0))
        self._device = probe.device
        return result

    # -- calling ---------------------------------------------------------------------------------
    def forward(self, *images: Any, **options: Any) -> torch.Tensor:
        expected = 2 if self.kind == "fr" else 1
        if len(images) != expected:
            usage = "metric(ref, dist)" if self.kind == "fr" else "metric(img)"
            raise InvalidInputError(f"{self.name} is a {'full' if self.kind == 'fr' else 'no'}-reference metric: "
                                    f"call it as {usage}, not with {len(images)} image argument(s)")
        names = ("ref", "dist") if self.kind == "fr" else ("img",)
        device = self.device
        batches = [to_image_batch(x, self.input_range, device, what=n) for x, n in zip(images, names)]
        if self.kind == "fr":
            ref, dist = batches
            if ref.shape[2:] != dist.shape[2:]:
                raise InvalidInputError(f"ref is {ref.shape[3]}x{ref.shape[2]} but dist is {dist.shape[3]}x"
                                        f"{dist.shape[2]}: images must have the same size")
            if ref.shape[0] != dist.shape[0]:
                if 1 not in (ref.shape[0], dist.shape[0]):
                    raise InvalidInputError(f"ref holds {ref.shape[0]} images but dist {dist.shape[0]}: give equal "
                                            f"batches, or one image to compare with every image of the other")
                n = max(ref.shape[0], dist.shape[0])
                batches = [ref.expand(n, -1, -1, -1), dist.expand(n, -1, -1, -1)]
        grad = self.keep_gradients and torch.is_grad_enabled()
        # full fp32 (no TF32 on CUDA, no caller's autocast): a call gives the numbers the commands'
        # default --precision gives; the commands' fp16/bf16 go through engine.autocast directly
        with torch.set_grad_enabled(grad), autocast(device, "fp32", self):
            return self.score(*batches, **options)

    def check_size(self, hw: tuple[int, int], name: str = "images") -> None:
        """Raise InvalidInputError when images of this (H, W) are too small for the metric; callers
        that plan work on many files check sizes first, before any image is decoded."""

    def score(self, *images: torch.Tensor, **options: Any) -> torch.Tensor:
        """(N,) scores of float (N, 3, H, W) batches in [0, 1] on the metric's device."""
        raise NotImplementedError

    # -- description -----------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """What identifies this configured metric in outputs (JSON, CSV headers, titles)."""
        return {"metric": self.name}

    def describe(self) -> str:
        """One short human line, e.g. ``lpips (alex, v0.1)``."""
        extra = [f"{k}={v}" for k, v in self.meta().items() if k != "metric" and v is not None]
        return self.name + (f" ({', '.join(extra)})" if extra else "")
