"""Correlation statistics and the monotonic fits used before PLCC/RMSE."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from iqa_cli.errors import InvalidInputError
from iqa_cli.stats.correlation import correlation_report, fit_glm, fit_vqeg4


def test_glm_fit_solves_the_binomial_score_equations(rng):
    s = rng.uniform(0, 1, 200)
    mos = np.clip(special.expit(-2 + 5 * s) + rng.normal(0, 0.05, 200), 0, 1)
    fit = fit_glm(s, mos)
    p = fit.predict(s)
    # At the maximum-likelihood estimate the gradient of the log-likelihood is zero.
    assert abs(np.sum(mos - p)) < 1e-4 and abs(np.sum((mos - p) * s)) < 1e-4
    assert fit.params[1] == pytest.approx(5, abs=0.6)


def test_vqeg4_fit_recovers_a_logistic(rng):
    s = np.linspace(0, 10, 60)
    y = (4 - 1) * special.expit((s - 5) / 1.5) + 1 + rng.normal(0, 0.01, 60)
    fit = fit_vqeg4(s, y)
    np.testing.assert_allclose(fit.predict(s), (4 - 1) * special.expit((s - 5) / 1.5) + 1, atol=0.03)


def test_report_matches_scipy_on_fitted_values(rng):
    s = rng.uniform(0, 1, 80)
    mos = np.clip(0.8 * s + rng.normal(0, 0.1, 80), 0, 1)
    rep = correlation_report(s, mos, fit="glm")
    fitted = rep.fit.predict(s)
    assert rep.n == 80
    assert rep.plcc == pytest.approx(stats.pearsonr(fitted, mos)[0])
    assert rep.srocc_raw == pytest.approx(stats.spearmanr(s, mos)[0])
    assert rep.krocc == pytest.approx(stats.kendalltau(fitted, mos)[0])
    assert rep.rmse == pytest.approx(np.sqrt(np.mean((fitted - mos) ** 2)))


def test_nan_rows_are_dropped_and_too_few_points_is_an_error():
    s = np.array([0.1, np.nan, 0.3, 0.5, 0.7])
    m = np.array([0.1, 0.2, np.nan, 0.4, 0.6])
    assert correlation_report(s, m).n == 3
    with pytest.raises(InvalidInputError, match="at least 3"):
        correlation_report(s[:3], m[:3])
    with pytest.raises(InvalidInputError, match="vqeg4"):
        correlation_report(s, m, fit="vqeg4")
    with pytest.raises(InvalidInputError, match="MOS in"):
        correlation_report([0.1, 0.2, 0.3], [1, 2, 3], fit="glm")
