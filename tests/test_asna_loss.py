"""ASNA's loss against a hand computation of the formula in reference/macs.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from iqa_cli.losses.asna import AsnaLoss, clipped_pearson
from iqa_cli.models.sorter import SorterConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hand_loss(p: np.ndarray, y: np.ndarray, m: float, s: float, pred_ranks: np.ndarray, target_ranks: np.ndarray
              ) -> float:
    """L = m MSE + (1 - m)(1 - r^2) + s mean (R(y) - R(p))^2, r the clipped Pearson correlation."""
    yc, pc = y - y.mean(), p - p.mean()
    r = np.clip((yc * pc).sum() / np.sqrt((yc ** 2).sum() * (pc ** 2).sum()), -1, 1)
    return m * np.mean((y - p) ** 2) + (1 - m) * (1 - r ** 2) + s * np.mean((target_ranks - pred_ranks) ** 2)


class ExactRanker(nn.Module):
    """A 'sorter' that is exact (and, scaled, distinguishable): ranks of each row times ``gain``."""

    def __init__(self, length: int = 16, gain: float = 1.0):
        super().__init__()
        self.config = SorterConfig(length=length)
        self.gain = gain
        self.weight = nn.Parameter(torch.ones(1))  # to check the loss freezes a sorter

    def forward(self, x):
        return torch.from_numpy(stats.rankdata(x.detach().numpy(), axis=1)).to(x.dtype) * self.gain * self.weight


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(3)
    target = torch.randn(16, generator=g, dtype=torch.float64)
    pred = 0.5 * target + 0.8 * torch.randn(16, generator=g, dtype=torch.float64)
    return pred, target


@pytest.mark.parametrize("m, s", [(0.1, 0.1), (0.5, 0.1), (1.0, 0.01)])
def test_soft_ranker_loss_matches_the_formula(batch, m, s):
    pred, target = batch
    p, y = pred.numpy(), target.numpy()
    loss = AsnaLoss(m, s, ranker="soft", temperature=1e-7)(pred, target)  # soft ranks -> exact ranks
    assert float(loss) == pytest.approx(hand_loss(p, y, m, s, stats.rankdata(p), stats.rankdata(y)), rel=1e-6)


def test_sorter_ranker_and_the_originals_target_ranks(batch):
    pred, target = batch
    p, y = pred.numpy(), target.numpy()
    sorter = ExactRanker(gain=1.1)
    exact_targets = AsnaLoss(0.1, 0.1, ranker=sorter)(pred, target)
    assert float(exact_targets) == pytest.approx(
        hand_loss(p, y, 0.1, 0.1, 1.1 * stats.rankdata(p), stats.rankdata(y)), rel=1e-6)
    through_sorter = AsnaLoss(0.1, 0.1, ranker=sorter, target_ranks="ranker")(pred, target)
    assert float(through_sorter) == pytest.approx(
        hand_loss(p, y, 0.1, 0.1, 1.1 * stats.rankdata(p), 1.1 * stats.rankdata(y)), rel=1e-6)


def test_the_sorter_is_frozen_and_gradients_reach_the_predictions(batch):
    pred, target = batch
    pred = pred.clone().requires_grad_(True)
    loss = AsnaLoss(0.5, 0.1, ranker="soft")
    loss(pred, target).backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) > 0
    sorter = ExactRanker()
    AsnaLoss(ranker=sorter).train()
    assert not sorter.training and not sorter.weight.requires_grad


def test_one_minus_r_squared_rewards_an_inverted_ordering_too(batch):
    _, target = batch
    correlation_only = AsnaLoss(mse_weight=0.0, rank_weight=0.0)
    assert float(correlation_only(-2 * target, target)) == pytest.approx(0.0, abs=1e-9)
    assert float(clipped_pearson(-target, target)) == pytest.approx(-1.0)


def test_the_sorter_needs_its_batch_size():
    with pytest.raises(ValueError, match="exactly 16 scores, got 12"):
        AsnaLoss(ranker=ExactRanker())(torch.randn(12), torch.randn(12))
