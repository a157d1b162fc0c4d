"""GraphIQA's training objectives: which triplets pretraining draws, and the two losses.

Pretraining (no human scores): each step picks a distortion type t; the anchor graph is a batch of
crops of type t with random contents and levels, the positive graph another batch of type t, the
negative graph a batch of another type. Loss = TripletMarginLoss(margin 0.1, p 2) on the three graph
codes + 0.25 x MSE between the anchor crops' sampled level predictions and their levels. The
positive and negative codes carry no gradient (the released code computes them under no_grad).

Fine-tuning: each image is one graph of its crops (25 in the released setup; the graph rule of
models/graphiqa.py); loss = MSE between every crop's sampled prediction and its image's MOS, on the
database's raw score scale. Evaluation averages the crops' μ per image (GraphIQA.image_scores).

"Sampled" is μ + ε·s with ε ~ N(0, 1), the fuzzy heads' reparameterised draw; it happens here, in
training only, never in the model (the released code also sampled at test time: bug 1).

The sampler is a pure function of (seed, stream, step): a resumed run draws the same triplets, and
DDP ranks pass their rank as ``stream`` to draw different ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

TRIPLET_MARGIN = 0.1
LEVEL_WEIGHT = 0.25
BATCH_SIZE = 32


# -- triplet sampling --------------------------------------------------------------------------
@dataclass(frozen=True)
class TripletDraw:
    """One pretraining step's rows of the table (image, type, level), and a seed for its crops."""

    step: int
    anchor_type: Hashable
    negative_type: Hashable
    anchor: np.ndarray  # (batch,) row indices, all of anchor_type
    positive: np.ndarray  # (batch,) row indices, all of anchor_type
    negative: np.ndarray  # (batch,) row indices, all of negative_type
    crop_seed: int  # seed a torch.Generator with it to place this step's random crops

    def to_dict(self) -> dict:
        return {"step": self.step, "anchor_type": self.anchor_type, "negative_type": self.negative_type,
                "anchor": self.anchor.tolist(), "positive": self.positive.tolist(),
                "negative": self.negative.tolist(), "crop_seed": self.crop_seed}


class TripletSampler:
    """Draws pretraining triplets from a table's distortion-type column.

    ``types[r]`` is row r's distortion type, a number or a name (None or NaN for rows without one,
    e.g. pristine references, which are never drawn). Types are picked uniformly among those present
    (KADIS's empty type 8 simply never appears); a batch takes ``batch_size`` distinct rows of its
    type, or draws with replacement when the type has fewer rows than that.
    """

    def __init__(self, types: Sequence[Hashable | None], batch_size: int = BATCH_SIZE, seed: int = 0,
                 stream: int = 0):
        if batch_size < 1:
            raise InvalidInputError(f"GraphIQA pretraining batch size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.stream = int(stream)
        rows: dict[Hashable, list[int]] = {}
        for r, t in enumerate(types):
            if t is None or (isinstance(t, (float, np.floating)) and np.isnan(t)):
                continue
            rows.setdefault(t.item() if isinstance(t, np.generic) else t, []).append(r)
        try:
            ordered = sorted(rows)
        except TypeError:  # numbers and names mixed: any fixed order will do
            ordered = sorted(rows, key=repr)
        if len(rows) < 2:
            found = ", ".join(map(str, ordered)) or "none"
            raise InvalidInputError(f"GraphIQA pretraining needs images of at least 2 distortion types, found "
                                    f"types: {found} (use a KADID-style folder with its type/level listing)")
        self.types = tuple(ordered)
        self.rows = {t: np.asarray(r, dtype=np.int64) for t, r in rows.items()}

    def _batch(self, rng: np.random.Generator, distortion: int) -> np.ndarray:
        pool = self.rows[distortion]
        return rng.choice(pool, size=self.batch_size, replace=len(pool) < self.batch_size)

    def draw(self, step: int) -> TripletDraw:
        rng = np.random.default_rng([self.seed, self.stream, int(step)])
        anchor_type = self.types[int(rng.integers(len(self.types)))]
        others = [t for t in self.types if t != anchor_type]
        negative_type = others[int(rng.integers(len(others)))]
        anchor = self._batch(rng, anchor_type)
        positive = self._batch(rng, anchor_type)
        negative = self._batch(rng, negative_type)
        crop_seed = int(rng.integers(2**62))
        return TripletDraw(int(step), anchor_type, negative_type, anchor, positive, negative, crop_seed)

    def __iter__(self) -> Iterator[TripletDraw]:
        step = 0
        while True:
            yield self.draw(step)
            step += 1


# -- losses ------------------------------------------------------------------------------------
def fuzzy_sample(mu: torch.Tensor, spread: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """μ + ε·s, ε ~ N(0, 1) per element (the training-time prediction of a fuzzy head)."""
    if generator is None:
        noise = torch.randn_like(mu)
    else:  # drawn where the generator lives, so a CPU generator gives the same noise on any device
        noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=generator.device).to(mu.device)
    return mu + noise * spread


@dataclass(frozen=True)
class PretrainLoss:
    total: torch.Tensor
    triplet: torch.Tensor
    level: torch.Tensor

    def to_dict(self) -> dict[str, float]:
        return {"loss": float(self.total), "triplet": float(self.triplet), "level_mse": float(self.level)}


def pretrain_loss(anchor_code: torch.Tensor, positive_code: torch.Tensor, negative_code: torch.Tensor,
                  level_pred: torch.Tensor, level_target: torch.Tensor, margin: float = TRIPLET_MARGIN,
                  level_weight: float = LEVEL_WEIGHT) -> PretrainLoss:
    """TripletMarginLoss(margin, p=2) on (G,256) graph codes + level_weight x MSE(level_pred, level).

    The positive and negative codes are detached: only the anchor graph is trained by the triplet."""
    triplet = F.triplet_margin_loss(anchor_code, positive_code.detach(), negative_code.detach(), margin=margin, p=2)
    level = F.mse_loss(level_pred.flatten(), level_target.flatten().to(level_pred))
    return PretrainLoss(triplet + level_weight * level, triplet, level)


def finetune_loss(crop_pred: torch.Tensor, mos: torch.Tensor) -> torch.Tensor:
    """Mean over images and crops of (crop prediction - image MOS)^2; crop_pred (G,N), mos (G,)."""
    if crop_pred.ndim != 2 or mos.numel() != crop_pred.shape[0]:
        raise ValueError(f"finetune_loss: predictions {tuple(crop_pred.shape)} do not fit {mos.numel()} MOS values")
    return torch.mean((crop_pred - mos.reshape(-1, 1).to(crop_pred)) ** 2)


# -- one step's forward passes -----------------------------------------------------------------
def pretrain_objective(model: torch.nn.Module, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                       anchor_levels: torch.Tensor, generator: torch.Generator | None = None,
                       margin: float = TRIPLET_MARGIN, level_weight: float = LEVEL_WEIGHT) -> PretrainLoss:
    """The pretraining loss of one triplet: anchor/positive/negative crops (N,3,s,s) or (G,N,3,s,s),
    one graph each (mean-edge summary), and the anchor crops' levels (N,) or (G,N).

    ``model`` is a GraphIQA, or a DDP wrapper of one (only its forward is called)."""
    out = model(anchor, parts=("code", "level"), summary="mean")
    with torch.no_grad():
        positive_code = model(positive, parts=("code",)).code
        negative_code = model(negative, parts=("code",)).code
    level_pred = fuzzy_sample(out.level.mu, out.level.spread, generator)
    return pretrain_loss(out.code, positive_code, negative_code, level_pred, anchor_levels, margin, level_weight)


def finetune_objective(model: torch.nn.Module, crops: torch.Tensor, mos: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """The fine-tuning loss of a batch: crops (G,N,3,s,s), each image's N crops one graph (self-edge
    summary), and the G images' MOS."""
    if crops.ndim != 5:
        raise ValueError(f"finetune_objective expects crops (G,N,3,H,W), got {tuple(crops.shape)}")
    out = model(crops, parts=("mos",), summary="self")
    return finetune_loss(fuzzy_sample(out.mos.mu, out.mos.spread, generator), mos)
