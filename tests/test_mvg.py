"""The pristine-Gaussian engine against numpy's mean/cov and a direct pinv formula."""

from __future__ import annotations

import numpy as np
import torch

from iqa_cli.models.mvg import fit_mvg, mvg_distance


def _numpy_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.nanmean(x, axis=0), np.cov(x[~np.isnan(x).any(axis=1)].T)


def test_fit_matches_numpy_with_nan_rows(rng):
    x = rng.normal(size=(60, 5))
    x[[3, 17], [1, 4]] = np.nan
    fit = fit_mvg(torch.from_numpy(x))
    mean, cov = _numpy_fit(x)
    np.testing.assert_allclose(fit.mean.numpy(), mean, atol=1e-12)
    np.testing.assert_allclose(fit.cov.numpy(), cov, atol=1e-12)


def test_distance_pinv_and_ridge_match_the_formula(rng):
    a, b = rng.normal(size=(80, 4)), rng.normal(size=(50, 4)) + 0.5
    (ma, ca), (mb, cb) = _numpy_fit(a), _numpy_fit(b)
    pa, pb = fit_mvg(torch.from_numpy(a)), fit_mvg(torch.from_numpy(b))
    d = ma - mb
    expected = np.sqrt(d @ np.linalg.pinv((ca + cb) / 2) @ d)
    assert abs(float(mvg_distance(pa, pb)) - expected) < 1e-10
    ridge = np.sqrt(d @ np.linalg.inv((ca + cb) / 2 + 0.001 * np.eye(4)) @ d)
    assert abs(float(mvg_distance(pa, pb, ridge=0.001, pseudo_inverse=False)) - ridge) < 1e-10
    assert float(mvg_distance(pa, pa)) == 0.0


def test_batched_fit_equals_one_by_one(rng):
    sets = torch.from_numpy(rng.normal(size=(3, 40, 6)))
    pristine = fit_mvg(torch.from_numpy(rng.normal(size=(100, 6))))
    batched = mvg_distance(pristine, fit_mvg(sets))
    single = torch.stack([mvg_distance(pristine, fit_mvg(s)) for s in sets])
    torch.testing.assert_close(batched, single, rtol=1e-12, atol=1e-12)
