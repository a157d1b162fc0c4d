"""Losses: the soft-rank Spearman surrogate, the MOS loss combinations and LPIPS's Dist2Logit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from iqa_cli.losses import (BCERankingLoss, Dist2Logit, hard_rank, mos_loss, mse_loss, rank_loss, soft_rank,
                            soft_spearman)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors: one intra-op thread is faster and immune to OpenMP spin-wait stalls when
    other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- soft rank ----------------------------------------------------------------------------------
def test_hard_rank_matches_scipy_average_ranks_with_ties():
    x = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0, 1.0, 2.0])
    assert torch.equal(hard_rank(x), torch.tensor(stats.rankdata(x.numpy()), dtype=torch.float32))


@pytest.mark.parametrize("n", [2, 5, 40])
def test_soft_rank_tends_to_exact_ranks(n):
    x = torch.randn(n, generator=_gen(n), dtype=torch.float64)
    exact = torch.tensor(stats.rankdata(x.numpy()), dtype=torch.float64)
    errors = [float((soft_rank(x, t) - exact).abs().max()) for t in (1.0, 0.1, 1e-2, 1e-4, 1e-6, 1e-8)]
    assert errors == sorted(errors, reverse=True)  # shrinks with the temperature
    assert errors[-1] < 1e-6


def test_soft_rank_of_ties_is_the_average_rank_and_a_lone_value_ranks_first():
    assert torch.allclose(soft_rank(torch.tensor([1.0, 2.0, 2.0, 3.0]), 1e-4), torch.tensor([1.0, 2.5, 2.5, 4.0]))
    assert torch.allclose(soft_rank(torch.tensor([0.7]), 0.1), torch.tensor([1.0]))


def test_soft_rank_rejects_a_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        soft_rank(torch.randn(4), 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_spearman_approaches_scipy_spearman_as_temperature_goes_to_zero(seed):
    g = _gen(seed)
    target = torch.randn(60, generator=g, dtype=torch.float64)
    pred = 0.6 * target + torch.randn(60, generator=g, dtype=torch.float64)
    pred[:6] = pred[6:12]  # ties in the prediction
    target = torch.round(target * 2) / 2  # and in the target
    rho = stats.spearmanr(pred.numpy(), target.numpy())[0]
    gaps = [abs(float(soft_spearman(pred, target, t)) - rho) for t in (1.0, 0.1, 1e-2, 1e-4, 1e-6, 1e-8)]
    assert gaps[0] > 1e-3  # a warm temperature really smooths
    assert max(gaps[-2:]) < 1e-6


def test_soft_spearman_is_invariant_to_scale_and_offset_of_the_scores():
    g = _gen(3)
    target, pred = torch.randn(20, generator=g), torch.randn(20, generator=g)
    base = soft_spearman(pred, target)
    assert torch.allclose(soft_spearman(10 * pred + 3, target), base, atol=1e-6)
    assert torch.allclose(soft_spearman(pred, 0.01 * target - 1), base, atol=1e-6)


def test_rank_loss_tracks_one_minus_srocc():
    g = _gen(4)
    target = torch.randn(32, generator=g)
    losses, truth = [], []
    for a in np.linspace(-1, 1, 21):  # from reversed through unrelated to perfectly ordered
        pred = float(a) * target + (1 - abs(float(a))) * torch.randn(32, generator=g)
        losses.append(float(rank_loss(pred, target)))
        truth.append(1 - stats.spearmanr(pred.numpy(), target.numpy())[0])
    losses, truth = np.array(losses), np.array(truth)
    assert np.abs(losses - truth).max() < 0.05
    assert stats.spearmanr(losses, truth)[0] > 0.99
    assert losses[-1] < 0.01 and losses[0] > 1.95  # perfect order ~0, reversed ~2


def test_rank_loss_gradients_reorder_a_misordered_batch():
    target = torch.tensor([0.1, 0.2, 0.3, 0.5, 0.8, 0.9])
    pred = torch.tensor([0.9, 0.3, 0.5, 0.1, 0.2, 0.8], requires_grad=True)  # badly ordered
    before = stats.spearmanr(pred.detach().numpy(), target.numpy())[0]
    opt = torch.optim.Adam([pred], lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        rank_loss(pred, target).backward()
        opt.step()
    after = stats.spearmanr(pred.detach().numpy(), target.numpy())[0]
    assert before < 0.2
    assert after == pytest.approx(1.0)


def test_rank_loss_gradient_pushes_a_swapped_pair_apart_in_the_right_direction():
    target = torch.tensor([0.0, 1.0, 2.0, 3.0])
    pred = torch.tensor([0.0, 2.1, 2.0, 3.0], requires_grad=True)  # items 1 and 2 swapped
    rank_loss(pred, target).backward()
    assert pred.grad[1] > 0 and pred.grad[2] < 0  # descent lowers item 1 and raises item 2


def test_degenerate_batches_give_zero_loss_on_the_graph():
    one = torch.tensor([0.4], requires_grad=True)
    value = soft_spearman(one, torch.tensor([0.2]))
    assert value.requires_grad and float(value.detach()) == 0.0
    flat = torch.tensor([0.4, 0.1, 0.3], requires_grad=True)
    assert float(soft_spearman(flat, torch.tensor([0.5, 0.5, 0.5])).detach()) == 0.0
    with pytest.raises(ValueError, match="predictions"):
        soft_spearman(torch.zeros(3), torch.zeros(4))


def test_mos_loss_kinds_combine_as_documented():
    g = _gen(5)
    pred, target = torch.rand(8, generator=g), torch.rand(8, generator=g)
    mse = float(torch.mean((pred - target) ** 2))
    assert float(mos_loss("mse", pred, target)) == pytest.approx(mse)
    assert float(mse_loss(pred, target)) == pytest.approx(mse)
    rank = float(rank_loss(pred, target, 0.05))
    assert float(mos_loss("rank", pred, target, temperature=0.05)) == pytest.approx(rank)
    assert float(mos_loss("mse+rank", pred, target, rank_weight=0.3, temperature=0.05)) == pytest.approx(
        mse + 0.3 * rank, rel=1e-6)
    with pytest.raises(ValueError, match="unknown loss"):
        mos_loss("l1", pred, target)


# -- Dist2Logit -----------------------------------------------------------------------------------
def test_dist2logit_architecture_and_inputs():
    net = Dist2Logit()
    convs = [m for m in net.model if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(5, 32), (32, 32), (32, 1)]
    assert all(c.kernel_size == (1, 1) and c.bias is not None for c in convs)
    acts = [m for m in net.model if isinstance(m, torch.nn.LeakyReLU)]
    assert len(acts) == 2 and all(a.negative_slope == 0.2 for a in acts)
    assert isinstance(net.model[-1], torch.nn.Sigmoid)
    d0, d1 = torch.tensor([0.1, 0.5, 0.0]), torch.tensor([0.3, 0.2, 0.0])
    seen = {}
    net.model[0].register_forward_hook(lambda m, inp, out: seen.update(x=inp[0].detach()))
    prob = net(d0, d1)
    assert prob.shape == (3,) and bool(((prob > 0) & (prob < 1)).all())
    expected = torch.stack([d0, d1, d0 - d1, d0 / (d1 + 0.1), d1 / (d0 + 0.1)], dim=1)
    assert torch.allclose(seen["x"].flatten(1), expected)


def test_bce_ranking_loss_learns_which_of_the_pair_people_prefer():
    torch.manual_seed(0)
    g = _gen(6)
    d0, d1 = torch.rand(256, generator=g), torch.rand(256, generator=g)
    judge = (d1 < d0).float()  # people prefer p1 when it is closer to the reference
    ranker = BCERankingLoss()
    opt = torch.optim.Adam(ranker.parameters(), lr=1e-2)
    first = float(ranker(d0, d1, judge).detach())
    for _ in range(300):
        opt.zero_grad()
        loss = ranker(d0, d1, judge)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    prob = ranker.net(d0, d1)
    assert float(((prob > 0.5).float() == judge).float().mean()) > 0.9
    # and the gradient reaches the distances (so the heads below it learn)
    dd0 = d0.clone().requires_grad_(True)
    ranker(dd0, d1, judge).backward()
    assert dd0.grad is not None and float(dd0.grad.abs().sum()) > 0
