"""Ridge regression with CV-chosen alpha: closed form, planted relations, grouped folds."""

from __future__ import annotations

import numpy as np
import pytest

from iqa_cli.errors import InvalidInputError
from iqa_cli.stats.ridge import fit_ridge, fit_ridge_cv, kfold_indices


def closed_form(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """argmin ||y - [X 1] beta||^2 + alpha ||beta[:-1]||^2 from the normal equations, intercept unpenalised."""
    a = np.hstack([x, np.ones((len(x), 1))])
    penalty = alpha * np.eye(a.shape[1])
    penalty[-1, -1] = 0
    beta = np.linalg.solve(a.T @ a + penalty, a.T @ y)
    return beta[:-1], float(beta[-1])


@pytest.mark.parametrize("n, d", [(40, 6), (12, 30)])  # more images than features, and fewer
def test_fit_matches_the_closed_form(rng, n, d):
    x, y = rng.normal(size=(n, d)), rng.normal(size=n)
    for alpha in (0.1, 1.0, 100.0):
        model = fit_ridge(x, y, alpha)
        coef, intercept = closed_form(x, y, alpha)
        np.testing.assert_allclose(model.coef, coef, rtol=1e-9, atol=1e-10)
        assert model.intercept == pytest.approx(intercept, rel=1e-9, abs=1e-10)
        np.testing.assert_allclose(model.predict(x), x @ coef + intercept, rtol=1e-9, atol=1e-9)


def test_cv_recovers_a_planted_relation(rng):
    x = rng.normal(size=(300, 12))
    w = rng.normal(size=12)
    y = x @ w + 3.0 + 0.05 * rng.normal(size=300)
    model = fit_ridge_cv(x[:200], y[:200])
    assert model.alpha in (0.1, 1.0) and set(model.cv_mse) == {0.1, 1.0, 10.0, 100.0}
    np.testing.assert_allclose(model.coef, w, atol=0.05)
    assert model.intercept == pytest.approx(3.0, abs=0.05)
    test = x[200:]
    assert np.corrcoef(model.predict(test), y[200:])[0, 1] > 0.999
    # pure noise: the largest penalty wins
    assert fit_ridge_cv(x[:60], rng.normal(size=60)).alpha == 100.0


def test_grouped_folds_keep_contents_together(rng):
    groups = np.repeat(np.arange(10), 4)
    folds = kfold_indices(len(groups), 5, seed=0, groups=groups)
    assert sorted(np.concatenate(folds).tolist()) == list(range(40))
    for held in folds:
        assert set(groups[held]).isdisjoint(set(groups[np.setdiff1d(np.arange(40), held)]))
    x = rng.normal(size=(40, 3))
    assert fit_ridge_cv(x, x @ [1.0, 2.0, 3.0], groups=groups).alpha == 0.1
    with pytest.raises(InvalidInputError, match="at least 2 training contents"):
        fit_ridge_cv(x, x[:, 0], groups=np.zeros(40))
    with pytest.raises(InvalidInputError, match="NaN"):
        fit_ridge_cv(np.full((5, 2), np.nan), np.ones(5))
