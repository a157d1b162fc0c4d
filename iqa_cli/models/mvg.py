"""The pristine-Gaussian engine shared by NIQE and GRepQ's zero-shot score.

Both fit a multivariate Gaussian (MVG) to features of pristine patches once, fit one to a test
image's patch features, and report a Mahalanobis-like distance between the two:

    D = sqrt( (mu_p - mu_t)^T  inv((Sigma_p + Sigma_t) / 2 + ridge * I)  (mu_p - mu_t) )

NIQE uses the pseudo-inverse and no ridge; GRepQ adds ridge 0.001 and a plain inverse. Everything
works on batches (..., n, d) of per-image feature sets in float64, so a folder of same-size images
is fitted in one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MVG:
    """A fitted Gaussian: ``mean`` (..., d) and unbiased ``cov`` (..., d, d), float64."""

    mean: torch.Tensor
    cov: torch.Tensor

    def to(self, device: torch.device | str) -> "MVG":
        return MVG(self.mean.to(device), self.cov.to(device))


def fit_mvg(features: torch.Tensor) -> MVG:
    """Fit one Gaussian per feature set: ``features`` (..., n, d) -> MVG with (..., d) / (..., d, d).

    As the NIQE reference code does, the mean ignores NaN entries column by column, and the
    covariance is the unbiased one of the rows that hold no NaN at all (a block whose AGGD fit
    failed drops out of the covariance but still counts where its other features are finite).
    """
    x = features.to(torch.float64)
    if x.ndim < 2:
        raise ValueError(f"expected features (..., n, d), got shape {tuple(x.shape)}")
    mean = torch.nanmean(x, dim=-2)
    complete = ~torch.isnan(x).any(dim=-1, keepdim=True)  # (..., n, 1)
    k = complete.sum(dim=-2, keepdim=True).to(x.dtype)  # (..., 1, 1)
    clean = torch.where(complete, x, torch.zeros((), dtype=x.dtype, device=x.device))
    centred = (clean - clean.sum(dim=-2, keepdim=True) / k) * complete
    cov = centred.transpose(-1, -2) @ centred / (k - 1)
    return MVG(mean, cov)


def mvg_distance(pristine: MVG, test: MVG, ridge: float = 0.0, pseudo_inverse: bool = True) -> torch.Tensor:
    """Distance between a pristine Gaussian and (a batch of) test Gaussians, float64 (...,).

    ``pseudo_inverse`` (NIQE) uses pinv of the pooled covariance; otherwise it is solved directly
    (GRepQ, whose ridge keeps it invertible)."""
    diff = (pristine.mean.to(test.mean) - test.mean).unsqueeze(-1)  # (..., d, 1)
    pooled = (pristine.cov.to(test.cov) + test.cov) / 2
    if ridge:
        pooled = pooled + ridge * torch.eye(pooled.shape[-1], dtype=pooled.dtype, device=pooled.device)
    if pseudo_inverse:
        weighted = torch.linalg.pinv(pooled, hermitian=True) @ diff
    else:
        weighted = torch.linalg.solve(pooled, diff)
    return (diff.transpose(-1, -2) @ weighted).squeeze(-1).squeeze(-1).clamp_min(0).sqrt()


def weights_hash(weights) -> str:
    """SHA-256 of a feature extractor's weights (an nn.Module or a state dict): names, dtypes,
    shapes and bytes of every tensor, buffers included. The key of a cached pristine Gaussian
    (``PristineStore.mvg``): other weights give other features, hence another Gaussian."""
    import hashlib

    state = weights.state_dict() if hasattr(weights, "state_dict") else weights
    h = hashlib.sha256()
    for name in sorted(state):
        t = torch.as_tensor(state[name]).detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
