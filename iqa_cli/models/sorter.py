"""The learned sorter: a 1-D CNN that maps a vector of n scores to their n ranks (ASNA's surrogate Spearman).

Architecture (Keras' layout, 'same' padding): Conv1D(8,2)+PReLU -> Conv1D(16,3)+BN+PReLU ->
Conv1D(32,5)+BN+PReLU -> Conv1D(64,7)+BN+PReLU -> Conv1D(96,10)+PReLU -> Conv1D(128,7)+BN+PReLU ->
Conv1D(256,7)+BN+PReLU -> Flatten (channels-last) -> Dense(n). Widths, kernels and where the
BatchNorms sit are a :class:`SorterConfig` (``SORTER_PRESETS``: the original's, and a small one
that trains in CPU minutes).

Training (:func:`train_sorter`): random vectors, half N(0, 2^2) and half U(-10, 10), regressed onto
scipy.stats.rankdata with the mean absolute error; Adam 1e-3 with a x0.1 step decay. The original
drew 2,000,000 vectors and ran 100 epochs of batch 1024 (decay every 30).

Quality (:func:`sorter_quality`): the mean absolute rank error on fresh vectors, and on fresh
random pairs (y1, y2) the gap between the surrogate Spearman
rho~ = 1 - 6 ||R(y1) - R(y2)||^2 / (n (n^2 - 1)) and the true Spearman correlation.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .keras_layers import KerasPReLU, SameConv1d, flatten_channels_last, keras_batch_norm1d


@dataclass(frozen=True)
class SorterConfig:
    length: int = 16
    channels: tuple[int, ...] = (8, 16, 32, 64, 96, 128, 256)
    kernels: tuple[int, ...] = (2, 3, 5, 7, 10, 7, 7)
    batch_norm: tuple[bool, ...] = (False, True, True, True, False, True, True)
    shared_alpha: bool = False  # Keras PReLU default: one slope per position and channel

    def __post_init__(self):
        for name in ("channels", "kernels", "batch_norm"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not (len(self.channels) == len(self.kernels) == len(self.batch_norm) >= 1) or self.length < 2:
            raise ValueError(f"SorterConfig: channels, kernels and batch_norm need one entry per layer "
                             f"(got {len(self.channels)}, {len(self.kernels)}, {len(self.batch_norm)}) and length >= 2")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SorterConfig":
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown sorter config keys: {', '.join(unknown)}")
        return cls(**values)


SORTER_PRESETS: dict[str, SorterConfig] = {
    "original": SorterConfig(),
    # a quarter of the widths: ~25x fewer multiply-adds, for training on a CPU in minutes
    "small": SorterConfig(channels=(8, 8, 16, 16, 24, 32, 64)),
}


class Sorter(nn.Module):
    """(N, length) scores -> (N, length) approximate ranks (1 = smallest)."""

    def __init__(self, config: SorterConfig | None = None):
        super().__init__()
        self.config = config = config or SorterConfig()
        layers = []
        c_in = 1
        for c_out, kernel, bn in zip(config.channels, config.kernels, config.batch_norm):
            layers.append(nn.ModuleDict({
                "conv": SameConv1d(c_in, c_out, kernel),
                **({"norm": keras_batch_norm1d(c_out)} if bn else {}),
                "act": KerasPReLU(c_out, 1 if config.shared_alpha else config.length),
            }))
            c_in = c_out
        self.layers = nn.ModuleList(layers)
        self.dense = nn.Linear(config.length * c_in, config.length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.length:
            raise ValueError(f"the sorter ranks vectors of {self.config.length} scores, got shape {tuple(x.shape)}")
        h = x.unsqueeze(1)
        for layer in self.layers:
            h = layer["conv"](h)
            if "norm" in layer:
                h = layer["norm"](h)
            h = layer["act"](h)
        return self.dense(flatten_channels_last(h))


def random_score_vectors(count: int, length: int = 16, generator: torch.Generator | None = None) -> torch.Tensor:
    """The original's training vectors: the first half N(0, 2^2), the second half U(-10, 10)."""
    normal = count // 2
    gaussian = 2.0 * torch.randn(normal, length, generator=generator)
    uniform = torch.rand(count - normal, length, generator=generator) * 20.0 - 10.0
    return torch.cat((gaussian, uniform))


def exact_ranks(x: torch.Tensor) -> torch.Tensor:
    """scipy.stats.rankdata (average ties) of each row, float32."""
    from scipy import stats  # slow to import; only training and the quality check need it

    return torch.from_numpy(stats.rankdata(x.detach().cpu().numpy(), axis=1).astype(np.float32))


def surrogate_spearman(ranks1: torch.Tensor, ranks2: torch.Tensor) -> torch.Tensor:
    """rho~ = 1 - 6 ||R1 - R2||^2 / (n (n^2 - 1)) per row."""
    n = ranks1.shape[-1]
    return 1.0 - 6.0 * ((ranks1 - ranks2) ** 2).sum(-1) / (n * (n * n - 1))


@dataclass(frozen=True)
class SorterTraining:
    """What :func:`train_sorter` did: the mean training MAE of each epoch and the time it took."""

    config: SorterConfig
    n_vectors: int
    epochs: int
    batch_size: int
    lr: float
    decay_every: int
    seed: int
    epoch_mae: tuple[float, ...]
    seconds: float

    def to_dict(self) -> dict:
        return {**asdict(self), "config": self.config.to_dict()}


def train_sorter(config: SorterConfig | None = None, n_vectors: int = 2_000_000, epochs: int = 100,
                 batch_size: int = 1024, lr: float = 1e-3, decay_every: int = 30, decay: float = 0.1, seed: int = 0,
                 device: str | torch.device = "cpu",
                 on_epoch: Callable[[int, float], None] | None = None) -> tuple[Sorter, SorterTraining]:
    """Train a sorter from scratch on random vectors (defaults: the original's recipe).

    Returns the sorter in eval mode on the CPU and a :class:`SorterTraining` record;
    ``on_epoch(epoch, mean_mae)`` is called after each epoch (progress, logs)."""
    config = config or SorterConfig()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vectors = random_score_vectors(n_vectors, config.length, generator)
    targets = exact_ranks(vectors)
    sorter = Sorter(config).to(device).train()
    optimiser = torch.optim.Adam(sorter.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, step_size=decay_every, gamma=decay)
    history = []
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(n_vectors, generator=generator)
        total, seen = 0.0, 0
        for first in range(0, n_vectors, batch_size):
            idx = order[first:first + batch_size]
            x, y = vectors[idx].to(device), targets[idx].to(device)
            loss = F.l1_loss(sorter(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        schedule.step()
        history.append(total / seen)
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    sample = torch.randperm(n_vectors, generator=generator)[:100_000]  # both halves of the training vectors
    recalibrate_batch_norm(sorter, vectors[sample], batch_size, device)
    record = SorterTraining(config, n_vectors, epochs, batch_size, lr, decay_every, seed, tuple(history),
                            time.perf_counter() - start)
    return sorter.cpu().eval(), record


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, vectors: torch.Tensor, batch_size: int = 1024,
                           device: str | torch.device = "cpu",
                           part: Callable[[int], slice] | None = None) -> None:
    """Re-estimate BatchNorm running statistics as plain averages over ``vectors`` (a shuffled
    sample of the training distribution). Keras' momentum 0.99 needs thousands of steps to forget
    the initial (0, 1) statistics, so after a short training the eval-mode network would use wrong ones.
    ``part(n)``: the rows of each batch of ``n`` this process runs, when synchronised BatchNorm
    (several processes) gathers every process's rows into the batch's statistics."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for first in range(0, len(vectors), batch_size):
        batch = vectors[first:first + batch_size]
        model((batch if part is None else batch[part(len(batch))]).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


@dataclass(frozen=True)
class SorterQuality:
    """The sorter's accuracy on fresh random vectors: mean |R(y) - rank(y)|, and over random pairs
    the mean and largest |rho~ - Spearman|."""

    mean_abs_rank_error: float
    spearman_gap_mean: float
    spearman_gap_max: float
    n_vectors: int
    n_pairs: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def sorter_quality(sorter: nn.Module, n_vectors: int = 10_000, n_pairs: int = 10_000, length: int = 16,
                   seed: int = 12345) -> SorterQuality:
    """The original's check of a sorter (any module mapping (N, length) scores to ranks)."""
    was_training = sorter.training
    sorter.eval()
    try:
        generator = torch.Generator().manual_seed(seed)
        vectors = random_score_vectors(n_vectors, length, generator)
        error = float((sorter(vectors) - exact_ranks(vectors)).abs().mean())
        first = random_score_vectors(n_pairs, length, generator)
        second = random_score_vectors(n_pairs, length, generator)[torch.randperm(n_pairs, generator=generator)]
        approx = surrogate_spearman(sorter(first), sorter(second))
        # continuous random vectors have no ties, where Spearman's rho is this formula on exact ranks
        exact = surrogate_spearman(exact_ranks(first), exact_ranks(second))
        gap = (approx - exact).abs()
    finally:
        sorter.train(was_training)
    return SorterQuality(error, float(gap.mean()), float(gap.max()), n_vectors, n_pairs)
