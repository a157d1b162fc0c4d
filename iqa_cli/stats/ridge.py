"""Ridge regression with the penalty chosen by K-fold cross-validation (numpy only).

GRepQ's data-efficient mode maps 1152-d features to MOS with ridge regression, alpha chosen from
{0.1, 1, 10, 100}. scikit-learn is not a dependency, and the whole method is a few lines:

    minimise ||y - X w - b||^2 + alpha ||w||^2   (the intercept b is not penalised)
    w = (Xc^T Xc + alpha I)^-1 Xc^T yc,  b = mean(y) - mean(X) w,   Xc, yc centred

solved through one SVD of Xc, Xc = U diag(s) V^T, so every alpha costs a matrix product:
w = V diag(s / (s^2 + alpha)) U^T yc (fine when features outnumber images, as in few-shot IQA).
No feature scaling is applied (as scikit-learn's Ridge). The alpha with the lowest mean squared
error on the held-out folds wins (ties: the smaller alpha); the folds are drawn from the training
part only, grouped by content when ``groups`` is given so no content is on both sides of a fold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidInputError

RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0)
DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class RidgeModel:
    """A fitted ridge regression: ``predict(x) = x @ coef + intercept``; the CV errors per alpha."""

    coef: np.ndarray
    intercept: float
    alpha: float
    cv_mse: dict[float, float] = field(default_factory=dict)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.coef + self.intercept

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "intercept": self.intercept, "coef": self.coef.tolist(),
                "cv_mse": {str(a): e for a, e in self.cv_mse.items()}}


def _check(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64).ravel()
    if x.ndim != 2 or len(x) != len(y):
        raise InvalidInputError(f"ridge regression needs features (n, d) and n targets, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InvalidInputError("ridge regression: features or scores hold NaN or infinite values")
    return x, y


def ridge_path(x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...]) -> list[tuple[np.ndarray, float]]:
    """(coef, intercept) for each alpha, from one SVD of the centred features."""
    x, y = _check(x, y)
    x_mean, y_mean = x.mean(axis=0), y.mean()
    u, s, vt = np.linalg.svd(x - x_mean, full_matrices=False)
    uty = u.T @ (y - y_mean)
    out = []
    for alpha in alphas:
        coef = vt.T @ (s / (s * s + alpha) * uty)
        out.append((coef, float(y_mean - x_mean @ coef)))
    return out


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> RidgeModel:
    """Ridge regression at one alpha."""
    (coef, intercept), = ridge_path(x, y, (float(alpha),))
    return RidgeModel(coef, intercept, float(alpha))


def kfold_indices(n: int, folds: int, seed: int = 0, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Held-out index sets of a shuffled K-fold split; with ``groups``, whole groups go to one fold."""
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n)
        return [np.sort(part) for part in np.array_split(order, folds)]
    groups = np.asarray(groups)
    unique = rng.permutation(np.unique(groups))
    return [np.flatnonzero(np.isin(groups, part)) for part in np.array_split(unique, folds)]


def fit_ridge_cv(x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...] = RIDGE_ALPHAS,
                 folds: int = DEFAULT_FOLDS, groups: np.ndarray | None = None, seed: int = 0) -> RidgeModel:
    """Choose alpha by K-fold CV on (x, y) -- the training part only -- then refit on all of it."""
    x, y = _check(x, y)
    units = len(np.unique(groups)) if groups is not None else len(y)
    folds = min(int(folds), units)
    if folds < 2:
        what = "contents" if groups is not None else "images"
        raise InvalidInputError(f"cross-validation needs at least 2 training {what}, got {units}")
    errors = np.zeros(len(alphas))
    for held in kfold_indices(len(y), folds, seed, groups):
        train = np.setdiff1d(np.arange(len(y)), held)
        for i, (coef, intercept) in enumerate(ridge_path(x[train], y[train], tuple(alphas))):
            errors[i] += float(np.sum((x[held] @ coef + intercept - y[held]) ** 2))
    errors /= len(y)
    best = int(np.argmin(errors))  # argmin takes the first of equal errors: the smaller alpha
    model = fit_ridge(x, y, alphas[best])
    return RidgeModel(model.coef, model.intercept, float(alphas[best]),
                      {float(a): float(e) for a, e in zip(alphas, errors)})
