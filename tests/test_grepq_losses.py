"""GRepQ's QACL and group contrastive loss against hand computations (loops over the formulas of
grepq.md), and a few QACL optimiser steps on distorted copies of real photographs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from iqa_cli.errors import InvalidInputError
from iqa_cli.losses.grepq import (
    HighLevelRecipeDefaults,
    LowLevelRecipeDefaults,
    group_contrastive_loss,
    qacl_loss,
    select_groups,
)


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def qacl_by_loops(anchor, augmented, sim, tau=0.5) -> float:
    total = 0.0
    for z, zp, s in zip(anchor.tolist(), augmented.tolist(), sim.tolist()):
        v = len(z)
        z, zp = [_unit(a) for a in z], [_unit(a) for a in zp]
        S = [[_dot(z[k], zp[l]) / tau for l in range(v)] for k in range(v)]
        w = [[1.0 if k == l else 2 * s[k][l] ** 2 / (1 + s[k][l] ** 2) for l in range(v)] for k in range(v)]
        row = sum(-math.log(sum(w[k][l] * math.exp(S[k][l]) for l in range(v))
                            / sum(math.exp(S[k][l]) for l in range(v))) for k in range(v)) / v
        col = sum(-math.log(sum(w[k][l] * math.exp(S[k][l]) for k in range(v))
                            / sum(math.exp(S[k][l]) for k in range(v))) for l in range(v)) / v
        total += row + col
    return total / len(anchor)


def test_qacl_equals_the_hand_computation():
    torch.manual_seed(0)
    anchor, augmented = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    sim = torch.rand(2, 3, 3, dtype=torch.float64)
    sim = (sim + sim.transpose(1, 2)) / 2
    sim[0, 0, 2] = sim[0, 2, 0] = 0.0  # a weight of zero: that term drops out
    sim[:, 0, 0] = 0.3  # the diagonal weight is 1 whatever s_kk says
    expected = qacl_by_loops(anchor, augmented, sim)
    assert float(qacl_loss(anchor, augmented, sim)) == pytest.approx(expected, rel=1e-12)
    assert float(qacl_loss(anchor, augmented, sim, temperature=0.1)) == pytest.approx(
        qacl_by_loops(anchor, augmented, sim, tau=0.1), rel=1e-12)
    # all versions identical in quality (s = 1): every weight is 1 and the loss is 0
    assert float(qacl_loss(anchor, augmented, torch.ones(2, 3, 3, dtype=torch.float64))) == pytest.approx(0, abs=1e-12)


def group_loss_by_loops(emb, q, g, t=0.5) -> float:
    order = sorted(range(len(q)), key=lambda i: q[i])
    groups = [order[:g], order[-g:]]
    u = {i: _unit(emb[i]) for i in groups[0] + groups[1]}
    losses = []
    for mine, other in (groups, groups[::-1]):
        for a in mine:
            p = sum(_dot(u[a], u[b]) for b in mine if b != a) / (g - 1)
            neg = sum(math.exp(_dot(u[a], u[b]) / t) for b in other)
            losses.append(-math.log(math.exp(p / t) / (math.exp(p / t) + neg)))
    return sum(losses) / len(losses)


def test_group_contrastive_loss_equals_the_hand_computation():
    torch.manual_seed(1)
    emb = torch.randn(7, 5, dtype=torch.float64)
    q = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8], dtype=torch.float64)
    for g in (2, 3):
        expected = group_loss_by_loops(emb.tolist(), q.tolist(), g)
        assert float(group_contrastive_loss(emb, q, group_size=g)) == pytest.approx(expected, rel=1e-12)
    low, high = select_groups(q, 2)
    assert low.tolist() == [1, 5] and high.tolist() == [6, 0]
    with pytest.raises(InvalidInputError, match="2G <= batch size"):
        group_contrastive_loss(emb, q, group_size=4)
    # the gradient reaches the embeddings (the head is trained through them)
    emb.requires_grad_(True)
    group_contrastive_loss(emb, q, group_size=3).backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_recipe_defaults_are_the_stated_ones():
    high = HighLevelRecipeDefaults()
    assert (high.lr, high.group_size, high.temperature, high.optimise_head) == (1e-5, 8, 0.5, True)
    low = LowLevelRecipeDefaults()
    assert (low.lr, low.weight_decay, low.epochs, low.contents_per_batch, low.temperature) == (1e-4, 0.05, 15, 8, 0.5)


def distorted_versions(image: np.ndarray) -> torch.Tensor:
    """The reference and 3 distorted copies (blur, noise x2) of a real photograph: (4, 3, H, W)."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    out = [image, ndimage.gaussian_filter(image, sigma=(2.0, 2.0, 0))]
    for std in (0.05, 0.15):
        out.append(np.clip(image + rng.normal(0, std, image.shape), 0, 1))
    return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2)).float()


@pytest.mark.slow
def test_a_few_qacl_steps_lower_the_loss():
    from skimage import data, transform

    from iqa_cli.datasets.grepq import fragment_views, fsim_matrix
    from iqa_cli.models.grepq import LowLevelEncoder

    contents = [transform.resize(getattr(data, n)()[..., :3] / 255.0, (96, 128), anti_aliasing=True)
                for n in ("astronaut", "coffee")]
    versions = [distorted_versions(im) for im in contents]
    sims = torch.from_numpy(np.stack([fsim_matrix(v) for v in versions])).float()
    assert (sims[:, 0, 1:] < 1).all() and (sims[:, 0, 2] > sims[:, 0, 3]).all()  # more noise, less similar
    views = [fragment_views(v, rng=i, grid=2, piece=32) for i, v in enumerate(versions)]  # small 64x64 views
    anchor = torch.stack([a for a, _ in views])  # (B, V, 3, 96, 96)
    augmented = torch.stack([b for _, b in views])

    torch.manual_seed(0)
    model = LowLevelEncoder().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    b, v = anchor.shape[:2]
    losses = []
    for _ in range(3):
        feats = model(torch.cat([anchor, augmented]).flatten(0, 1)).reshape(2, b, v, -1)
        loss = qacl_loss(feats[0], feats[1], sims)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]
