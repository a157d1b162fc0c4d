"""ASNA's rank-aware training loss.

Over a batch of predictions p and (standardised) targets y:

    r = clip( sum (y - mean y)(p - mean p) / sqrt( sum (y - mean y)^2 sum (p - mean p)^2 ), -1, 1 )
    L = m * MSE(y, p) + (1 - m) * (1 - r^2) + s * mean_i (R(y)_i - R(p)_i)^2

R(p) are differentiable ranks (1..n) of the predictions: the learned sorter of the original
(frozen, :mod:`iqa_cli.models.sorter`; it ranks exactly ``length`` = 16 scores, so batches must
have that size) or the soft rank already in :mod:`iqa_cli.losses` (any batch size). R(y): exact
ranks by default; the original fed the targets through the same approximate ranker
(``target_ranks="ranker"``). Kept from the original on purpose: 1 - r^2 rewards r = -1 as much as
r = +1 (the MSE and rank terms are what fix the direction).
"""

from __future__ import annotations

import torch
from torch import nn

from . import DEFAULT_TEMPERATURE, _pearson, hard_rank, soft_rank

RANKERS = ("soft", "sorter")
TARGET_RANKS = ("exact", "ranker")


def clipped_pearson(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson correlation over the batch, clipped to [-1, 1] (0 when either side is constant)."""
    return _pearson(pred.flatten(), target.flatten().to(pred.dtype)).clamp(-1.0, 1.0)


class AsnaLoss(nn.Module):
    """m * MSE + (1 - m) * (1 - r^2) + s * rank term (see the module docstring).

    ranker: "soft" (soft rank with ``temperature``), "sorter" (the bundled learned sorter) or a
    sorter module (frozen here: no gradients to its weights, always in eval mode).
    target_ranks: "exact" (default) or "ranker" (the original's choice)."""

    def __init__(self, mse_weight: float = 0.1, rank_weight: float = 0.1, ranker: str | nn.Module = "soft",
                 target_ranks: str = "exact", temperature: float = DEFAULT_TEMPERATURE):
        super().__init__()
        if not 0.0 <= mse_weight <= 1.0 or rank_weight < 0:
            raise ValueError(f"mse_weight must be in [0, 1] and rank_weight >= 0, got {mse_weight}, {rank_weight}")
        if target_ranks not in TARGET_RANKS:
            raise ValueError(f"target_ranks must be one of {', '.join(TARGET_RANKS)}, got {target_ranks!r}")
        if isinstance(ranker, str) and ranker not in RANKERS:
            raise ValueError(f"ranker must be one of {', '.join(RANKERS)} or a sorter module, got {ranker!r}")
        if ranker == "sorter":
            from ..weights import load_sorter

            ranker = load_sorter()
        self.mse_weight, self.rank_weight = mse_weight, rank_weight
        self.target_ranks, self.temperature = target_ranks, temperature
        self.sorter = None
        if isinstance(ranker, nn.Module):
            self.sorter = ranker.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "AsnaLoss":
        super().train(mode)
        if self.sorter is not None:
            self.sorter.eval()  # frozen: BatchNorm keeps its running statistics
        return self

    def ranks(self, scores: torch.Tensor) -> torch.Tensor:
        """Differentiable ranks (1..n) of a 1-D batch of scores."""
        scores = scores.flatten()
        if self.sorter is None:
            return soft_rank(scores, self.temperature)
        length = self.sorter.config.length
        if scores.numel() != length:
            raise ValueError(f"the learned sorter ranks batches of exactly {length} scores, got {scores.numel()} "
                             f"(drop the last partial batch, or use ranker='soft')")
        return self.sorter(scores[None].float())[0].to(scores.dtype)

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three terms and their weighted total."""
        pred, target = pred.flatten(), target.flatten().to(pred.dtype)
        if pred.numel() != target.numel():
            raise ValueError(f"AsnaLoss: {pred.numel()} predictions for {target.numel()} targets")
        weights = {"mse": self.mse_weight, "pearson": 1.0 - self.mse_weight, "rank": self.rank_weight}
        mse = torch.mean((target - pred) ** 2)
        # A term of weight 0 is left off the graph: near-constant predictions (a saturated head)
        # can give it an infinite gradient, and 0 x inf would make every gradient NaN.
        with torch.set_grad_enabled(torch.is_grad_enabled() and weights["pearson"] != 0):
            r = clipped_pearson(pred, target)
        with torch.set_grad_enabled(torch.is_grad_enabled() and weights["rank"] != 0):
            target_ranks = (hard_rank(target).to(pred.dtype) if self.target_ranks == "exact"
                            else self.ranks(target).detach())
            rank = torch.mean((target_ranks - self.ranks(pred)) ** 2)
        parts = {"mse": mse, "pearson": 1.0 - r * r, "rank": rank}
        total = sum(w * parts[k] for k, w in weights.items() if w != 0)  # m or 1 - m is not 0
        return {"mse": mse, "pearson": r, "rank": rank, "total": total}

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.terms(pred, target)["total"]
