"""Training losses: a differentiable Spearman surrogate and LPIPS's 2AFC ranking head.

Soft rank
---------
The rank of x_i among n values is 1 + #{j : x_j < x_i} (+ 1/2 per tie: scipy's "average" rank).
Replacing the step [x_j < x_i] by a sigmoid of the gap gives a differentiable rank

    r_i(tau) = 1 + sum_{j != i} sigmoid((z_i - z_j) / tau),     z = (x - mean x) / std x,

O(n^2) in memory and time, fine for the few-hundred-item batches it is used on. Ties give
sigmoid(0) = 1/2 each, i.e. exactly the average rank, and as tau -> 0 every other term becomes
the hard step, so the soft Spearman (Pearson correlation of the soft ranks of the prediction with
the ranks of the target) tends to scipy's Spearman. Standardising x first makes tau unit-free
(a fraction of the batch's standard deviation) and the loss invariant to the scale and offset of
the scores, as a rank correlation should be.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_TEMPERATURE = 0.1


def _standardise(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean()
    return x / (x.std(unbiased=False) + 1e-12)


def soft_rank(x: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """Differentiable ranks (1..n, ties averaged) of a 1-D tensor; exact ranks as temperature -> 0.

    temperature is in units of x's standard deviation; it must be > 0.
    """
    if temperature <= 0:
        raise ValueError(f"soft_rank temperature must be > 0, got {temperature}")
    x = x.flatten()
    z = _standardise(x) if x.numel() > 1 else x * 0
    pairwise = torch.sigmoid((z[:, None] - z[None, :]) / temperature)  # [i, j]: "x_j below x_i"
    # The diagonal is sigmoid(0) = 1/2 for every i: remove it so a lone value has rank 1.
    return 0.5 + pairwise.sum(dim=1)


def hard_rank(x: torch.Tensor) -> torch.Tensor:
    """Exact average ranks (1..n) of a 1-D tensor, as scipy.stats.rankdata(method='average')."""
    x = x.flatten()
    less = (x[None, :] < x[:, None]).sum(dim=1).to(torch.float64)
    equal = (x[None, :] == x[:, None]).sum(dim=1).to(torch.float64)
    return (less + (equal + 1) / 2).to(x.dtype if x.is_floating_point() else torch.float32)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean()
    b = b - b.mean()
    # clamped inside the root: a constant side gives 0 with a finite gradient (sqrt'(0) is infinite)
    return (a * b).sum() / (torch.sqrt(((a * a).sum() * (b * b).sum()).clamp_min(1e-30)) + 1e-12)


def soft_spearman(pred: torch.Tensor, target: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE
                  ) -> torch.Tensor:
    """Spearman correlation with soft ranks for ``pred`` (differentiable) and exact ranks for
    ``target`` (a constant). Fewer than two items, or a constant target: 0, still on the graph."""
    pred, target = pred.flatten(), target.flatten().to(pred.dtype)
    if pred.numel() != target.numel():
        raise ValueError(f"soft_spearman: {pred.numel()} predictions for {target.numel()} targets")
    if pred.numel() < 2 or bool((target == target[0]).all()):
        return pred.sum() * 0.0
    return _pearson(soft_rank(pred, temperature), hard_rank(target.detach()))


def rank_loss(pred: torch.Tensor, target: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """1 - soft Spearman: 0 for a perfect ordering, 1 for none, 2 for a reversed one."""
    return 1.0 - soft_spearman(pred, target, temperature)


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over stimuli of (predicted score - MOS)^2 (the Graphics-LPIPS loss)."""
    return torch.mean((pred.flatten() - target.flatten().to(pred.dtype)) ** 2)


LOSSES = ("mse", "rank", "mse+rank")


def mos_loss(kind: str, pred: torch.Tensor, target: torch.Tensor, rank_weight: float = 1.0,
             temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """The MOS-training loss: 'mse', 'rank' (1 - soft Spearman) or 'mse+rank' (mse + w * rank)."""
    if kind == "mse":
        return mse_loss(pred, target)
    if kind == "rank":
        return rank_loss(pred, target, temperature)
    if kind == "mse+rank":
        return mse_loss(pred, target) + rank_weight * rank_loss(pred, target, temperature)
    raise ValueError(f"unknown loss {kind!r}: choose one of {', '.join(LOSSES)}")


class Dist2Logit(nn.Module):
    """LPIPS's ranking network: from the two distances of a 2AFC triplet (d0 = d(ref, p0),
    d1 = d(ref, p1)) to the predicted fraction of people who preferred p1.

    Input cat(d0, d1, d0 - d1, d0 / (d1 + eps), d1 / (d0 + eps)) -> Conv1x1 5->32, LeakyReLU(0.2),
    32->32, LeakyReLU(0.2), 32->1, sigmoid. The 1x1 convolutions keep the original's parameter
    layout (``model.{0,2,4}.weight/bias``).
    """

    def __init__(self, chn_mid: int = 32, eps: float = 0.1):
        super().__init__()
        self.eps = eps
        self.model = nn.Sequential(
            nn.Conv2d(5, chn_mid, 1, stride=1, padding=0, bias=True),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(chn_mid, chn_mid, 1, stride=1, padding=0, bias=True),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(chn_mid, 1, 1, stride=1, padding=0, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        d0 = d0.reshape(-1, 1, 1, 1)
        d1 = d1.reshape(-1, 1, 1, 1)
        x = torch.cat((d0, d1, d0 - d1, d0 / (d1 + self.eps), d1 / (d0 + self.eps)), dim=1)
        return self.model(x).flatten()


class BCERankingLoss(nn.Module):
    """BCE between Dist2Logit's probability and the judge value h (fraction preferring p1)."""

    def __init__(self, chn_mid: int = 32):
        super().__init__()
        self.net = Dist2Logit(chn_mid=chn_mid)
        self.loss = nn.BCELoss()

    def forward(self, d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> torch.Tensor:
        prob = self.net(d0, d1)
        return self.loss(prob, judge.flatten().to(prob.dtype))
