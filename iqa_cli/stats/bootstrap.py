"""Uncertainty of agreement statistics: bootstrap confidence intervals and a paired comparison.

What a careful reviewer asks of "metric X has SROCC 0.91 on database Y": how sure is that, and is
metric X really better than metric Z on the same images?

- Resampling unit. Images of a synthetic database are not independent: all distortions of one
  reference share its content. Resampling whole reference contents (with replacement, keeping all
  of each drawn content's images) gives honest intervals there; authentic databases resample
  images. ``resample_indices(groups=...)`` does either.
- Interval: the percentile bootstrap, (alpha/2, 1 - alpha/2) quantiles of the statistic over the
  resamples, reported beside the point estimate of the full sample.
- Comparison: a paired bootstrap of the difference of two metrics' statistics on the same
  resamples; the two-sided p-value is the share of resamples on the far side of zero, doubled,
  with the usual (count + 1) / (B + 1) correction so it is never exactly 0.

PLCC and RMSE are refitted on every resample (the mapping is part of the statistic), starting
from the full sample's fit, which keeps a thousand refits fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

from ..errors import InvalidInputError
from .correlation import _quiet, fit_vqeg4

STATISTICS = ("srocc", "krocc", "plcc", "rmse")


def resample_indices(n: int, groups=None, n_boot: int = 1000, seed: int = 0) -> list[np.ndarray]:
    """``n_boot`` resamples of the rows 0..n-1: rows drawn with replacement, or (with ``groups``, one
    label per row) whole groups drawn with replacement and all their rows taken."""
    if n_boot < 1:
        raise InvalidInputError(f"--bootstrap {n_boot}: give at least 1 resample (or 0 to skip intervals)")
    rng = np.random.default_rng(seed)
    if groups is None:
        return [rng.integers(0, n, n) for _ in range(n_boot)]
    labels, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    members = [np.flatnonzero(codes == k) for k in range(len(labels))]
    out = []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(members), len(members))
        out.append(np.concatenate([members[k] for k in drawn]))
    return out


def _vqeg4(x, b1, b2, b3, b4):
    return (b1 - b2) * special.expit((x - b3) / abs(b4)) + b2


@_quiet
def _refit(s: np.ndarray, y: np.ndarray, p0) -> np.ndarray:
    try:
        params, _ = optimize.curve_fit(_vqeg4, s, y, p0=p0, maxfev=2000)
    except (RuntimeError, optimize.OptimizeWarning, ValueError):
        params = p0
    return _vqeg4(s, *params)


@_quiet
def agreement(scores, mos, p0=None) -> dict[str, float]:
    """SROCC and KROCC of the scores as given (their sign is the caller's: align them first), PLCC
    and RMSE after the VQEG 4-parameter logistic fit (``p0``: starting parameters, else fitted)."""
    s, y = np.asarray(scores, float), np.asarray(mos, float)
    if p0 is None:
        fitted = fit_vqeg4(s, y).predict(s)
    else:
        fitted = _refit(s, y, p0)
    return {"srocc": float(stats.spearmanr(s, y)[0]), "krocc": float(stats.kendalltau(s, y)[0]),
            "plcc": float(stats.pearsonr(fitted, y)[0]), "rmse": float(np.sqrt(np.mean((fitted - y) ** 2)))}


@dataclass(frozen=True)
class BootstrapResult:
    """Point estimates, percentile intervals and the per-resample values (for paired tests)."""

    point: dict[str, float]
    ci: dict[str, tuple[float, float]]
    samples: dict[str, np.ndarray]
    level: float
    n_boot: int

    def to_dict(self) -> dict:
        return {"point": dict(self.point), "ci": {k: list(v) for k, v in self.ci.items()}, "level": self.level,
                "n_boot": self.n_boot}


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(v, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_agreement(scores, mos, resamples: list[np.ndarray], level: float = 0.95,
                        statistics: tuple[str, ...] = STATISTICS) -> BootstrapResult:
    """Every statistic on the full sample and on each resample, with percentile intervals."""
    s, y = np.asarray(scores, float), np.asarray(mos, float)
    full_fit = fit_vqeg4(s, y)
    point = agreement(s, y)
    samples = {k: np.empty(len(resamples)) for k in statistics}
    needs_fit = any(k in ("plcc", "rmse") for k in statistics)
    for b, idx in enumerate(resamples):
        rs, ry = s[idx], y[idx]
        if needs_fit:
            values = agreement(rs, ry, p0=full_fit.params)
        else:
            values = {"srocc": float(stats.spearmanr(rs, ry)[0]), "krocc": float(stats.kendalltau(rs, ry)[0])}
        for k in statistics:
            samples[k][b] = values[k]
    ci = {k: percentile_interval(samples[k], level) for k in statistics}
    return BootstrapResult({k: point[k] for k in statistics}, ci, samples, level, len(resamples))


def paired_p_value(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided bootstrap p-value of 'statistic a equals statistic b', from their values on the
    same resamples: twice the share of differences on the far side of zero, (count + 1) / (B + 1)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[np.isfinite(d)]
    if not len(d):
        return float("nan")
    below, above = int((d <= 0).sum()), int((d >= 0).sum())
    return float(min(1.0, 2 * (min(below, above) + 1) / (len(d) + 1)))
