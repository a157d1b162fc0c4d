"""Agreement between objective scores and subjective ones: arrays in, floats out.

PLCC and RMSE are computed after a monotonic fit from scores to MOS; SROCC and KROCC of the
fitted values too (the raw ones, sign-flipped for a decreasing fit) and SROCC of the raw scores.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, special, stats

from ..errors import InvalidInputError

FITS = ("glm", "vqeg4")


def _quiet(fn):
    """Undefined statistics (constant input) are NaN and a fit without a covariance estimate is
    still a fit: neither may print a Python warning on the user's stderr."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            for category in (stats.ConstantInputWarning, stats.NearConstantInputWarning, optimize.OptimizeWarning):
                warnings.simplefilter("ignore", category)
            return fn(*args, **kwargs)

    return wrapper


@_quiet
def plcc(x, y) -> float:
    return float(stats.pearsonr(np.asarray(x, float), np.asarray(y, float))[0])


@_quiet
def srocc(x, y) -> float:
    return float(stats.spearmanr(np.asarray(x, float), np.asarray(y, float))[0])


@_quiet
def krocc(x, y) -> float:
    return float(stats.kendalltau(np.asarray(x, float), np.asarray(y, float))[0])


def rmse(x, y) -> float:
    return float(np.sqrt(np.mean((np.asarray(x, float) - np.asarray(y, float)) ** 2)))


@dataclass(frozen=True)
class Fit:
    """A fitted monotonic mapping from objective scores to MOS."""

    kind: str
    params: tuple[float, ...]

    def predict(self, scores) -> np.ndarray:
        s = np.asarray(scores, float)
        if self.kind == "glm":
            b0, b1 = self.params
            return special.expit(b0 + b1 * s)
        b1, b2, b3, b4 = self.params
        return (b1 - b2) * special.expit((s - b3) / abs(b4)) + b2

    @property
    def direction(self) -> float:
        """+1 for an increasing mapping, -1 for a decreasing one, 0 for a flat one."""
        slope = self.params[1] if self.kind == "glm" else self.params[0] - self.params[1]
        return float(np.sign(slope))


def fit_glm(scores, mos) -> Fit:
    """Binomial GLM with logit link on [1, score]: the fit of the Graphics-LPIPS evaluation.

    MOS in [0, 1] is the response fraction; the maximum-likelihood estimate is what IRLS finds.
    """
    s, y = np.asarray(scores, float), np.asarray(mos, float)
    if y.min() < 0 or y.max() > 1:
        raise InvalidInputError("the binomial GLM fit needs MOS in [0, 1]: rescale MOS or use --fit vqeg4")
    scale = s.std() or 1.0  # optimise on standardised scores for conditioning, then map back
    z = (s - s.mean()) / scale

    def nll(beta):
        eta = beta[0] + beta[1] * z
        return float(np.sum(np.logaddexp(0, eta) - y * eta))

    def grad(beta):
        r = special.expit(beta[0] + beta[1] * z) - y
        return np.array([r.sum(), (r * z).sum()])

    res = optimize.minimize(nll, np.zeros(2), jac=grad, method="BFGS")
    a0, a1 = res.x
    return Fit("glm", (float(a0 - a1 * s.mean() / scale), float(a1 / scale)))


@_quiet
def fit_vqeg4(scores, mos) -> Fit:
    """The VQEG 4-parameter logistic: (b1 - b2) / (1 + exp(-(s - b3)/|b4|)) + b2."""
    s, y = np.asarray(scores, float), np.asarray(mos, float)
    if len(s) < 5:
        raise InvalidInputError(f"the vqeg4 fit has 4 parameters and needs at least 5 stimuli, found {len(s)}: "
                                f"use --fit glm")
    sign = 1.0 if srocc(s, y) >= 0 else -1.0
    p0 = [y.max() if sign > 0 else y.min(), y.min() if sign > 0 else y.max(), float(np.median(s)),
          float(s.std() or 1.0)]

    def f(x, b1, b2, b3, b4):
        return (b1 - b2) * special.expit((x - b3) / abs(b4)) + b2

    try:
        params, _ = optimize.curve_fit(f, s, y, p0=p0, maxfev=20000)
    except (RuntimeError, optimize.OptimizeWarning):
        params = p0  # no convergence: fall back to the initial monotonic guess rather than fail
    return Fit("vqeg4", tuple(float(p) for p in params))


def fit_mapping(scores, mos, kind: str = "glm") -> Fit:
    if kind == "glm":
        return fit_glm(scores, mos)
    if kind == "vqeg4":
        return fit_vqeg4(scores, mos)
    raise InvalidInputError(f"unknown fit {kind!r}: choose one of {', '.join(FITS)}")


@dataclass(frozen=True)
class CorrelationReport:
    n: int
    plcc: float
    srocc: float
    krocc: float
    rmse: float
    srocc_raw: float
    fit: Fit

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fit"] = {"kind": self.fit.kind, "params": list(self.fit.params)}
        return d


def correlation_report(scores, mos, fit: str = "glm") -> CorrelationReport:
    """All agreement statistics of scores against MOS (NaN pairs are dropped)."""
    s, y = np.asarray(scores, float), np.asarray(mos, float)
    keep = np.isfinite(s) & np.isfinite(y)
    s, y = s[keep], y[keep]
    if len(s) < 3:
        raise InvalidInputError(f"correlation needs at least 3 scored stimuli with MOS, found {len(s)}")
    mapping = fit_mapping(s, y, fit)
    fitted = mapping.predict(s)
    # Rank statistics of the fitted values are those of the raw scores (sign-flipped for a decreasing
    # fit): computed from the raw scores, so a saturating fit (a near-step vqeg4) cannot merge ranks
    # into ties and inflate them.
    direction = mapping.direction if mapping.direction != 0 else float("nan")
    srocc_raw = srocc(s, y)
    return CorrelationReport(n=int(len(s)), plcc=plcc(fitted, y), srocc=direction * srocc_raw,
                             krocc=direction * krocc(s, y), rmse=rmse(fitted, y), srocc_raw=srocc_raw, fit=mapping)
