"""The learned-sorter recipe: ``iqa train --method sorter`` (ASNA's surrogate Spearman).

The original's recipe (models/sorter.py): random vectors of ``length`` scores, half N(0, 2^2) and
half U(-10, 10), regressed onto their exact ranks (scipy.stats.rankdata) with the mean absolute
error; Adam at ``lr`` x ``decay`` every ``decay_every`` epochs. The vectors are drawn once from the
run's seed; each epoch visits them all in an order seeded by (seed, epoch), in steps of
``batch_size`` (the last one may be smaller).

Run through the shared loop rather than as ``models.sorter.train_sorter`` (which stays, the plain
function the bundled sorter was made with): the run gets a run folder, metrics.csv and curves,
interruption and --resume, and torchrun, for nothing. Every evaluation first re-estimates the
BatchNorm running statistics on 100,000 of the training vectors (``recalibrate_batch_norm``: with
Keras' momentum the running statistics would otherwise lag far behind a short training), then
runs the original's check (``sorter_quality``): the mean absolute rank error on fresh vectors and
the gap between the surrogate Spearman and the true one on fresh pairs. Every checkpoint
(latest.pth, epoch_K.pth) loads as ``--ranker sorter --sorter PATH`` and with ``load_sorter``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .config import RunOptions
from .loop import Curves, Recipe, RunContext, Shard, TrainResult

METHOD = "sorter"
RECALIBRATION_VECTORS = 100_000
VECTOR_PURPOSE, SHUFFLE_PURPOSE, RECALIBRATION_PURPOSE = 7, 8, 9  # seeded generators of this recipe


@dataclass(frozen=True)
class SorterTrainConfig(RunOptions):
    """Everything an ``iqa train --method sorter`` run depends on (defaults: the original's recipe;
    with RunOptions' name, seed, ...).

    preset        models/sorter.SORTER_PRESETS: "original" (8...256 channels) or "small"
    n_vectors     random training vectors, drawn once from the seed
    eval_vectors  fresh vectors (and pairs) of each quality check
    """

    preset: str = "original"
    length: int = 16
    n_vectors: int = 2_000_000
    batch_size: int = 1024
    epochs: int = 100
    lr: float = 1e-3
    decay: float = 0.1
    decay_every: int = 30
    eval_every: int = 1
    eval_vectors: int = 10_000

    def __post_init__(self):
        object.__setattr__(self, "checkpoints_dir", str(self.checkpoints_dir))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "method": METHOD, "mode": METHOD}


RESUME_KEYS = ("mode", "preset", "length", "n_vectors", "batch_size", "lr", "decay", "decay_every", "seed")


def sorter_config(cfg: SorterTrainConfig):
    from ..models.sorter import SORTER_PRESETS

    if cfg.preset not in SORTER_PRESETS:
        raise InvalidInputError(f"--preset {cfg.preset}: the sorter presets are {', '.join(SORTER_PRESETS)}")
    return replace(SORTER_PRESETS[cfg.preset], length=cfg.length)


def validate_sorter_config(cfg: SorterTrainConfig) -> SorterTrainConfig:
    from .asna import _check_number
    from .config import _check_int, check_run_name, resolve_seed

    check_run_name(cfg.name)
    sorter_config(cfg)
    _check_int(cfg.length, "--length", 2)
    _check_int(cfg.n_vectors, "--vectors", 2)
    _check_int(cfg.batch_size, "--batch-size", 1)
    _check_int(cfg.epochs, "--nepoch", 1)
    _check_number(cfg.lr, "--lr", 0.0, low_inclusive=False)
    _check_number(cfg.decay, "--decay", 0.0, 1.0, low_inclusive=False)
    _check_int(cfg.decay_every, "--decay-every", 1)
    _check_int(cfg.eval_every, "--testset_freq", 1)
    _check_int(cfg.eval_vectors, "eval_vectors", 2)
    if cfg.num_workers is not None:
        _check_int(cfg.num_workers, "--workers", 0)
    return replace(cfg, seed=resolve_seed(cfg.seed))


class SorterRecipe(Recipe):
    """Items are vector indices; outputs per vector: the predicted and the exact ranks."""

    unit = "vectors"
    columns = ("rank_error", "spearman_gap", "spearman_gap_max")
    eval_key = "rank_error"
    curves = Curves(score=(("rank_error", "mean |rank error|"), ("spearman_gap", "mean Spearman gap")),
                    score_label="error on fresh vectors")

    def __init__(self, cfg: SorterTrainConfig):
        self.cfg = cfg
        self.model_config = sorter_config(cfg)

    def prepare(self, ctx: RunContext) -> None:
        from ..models.sorter import exact_ranks, random_score_vectors

        cfg = self.cfg
        self.seed, self.device, self.num_workers = ctx.seed, ctx.device, ctx.num_workers
        self.config = dict(ctx.config)
        generator = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, VECTOR_PURPOSE])
                                                      .integers(2 ** 62)))
        self.vectors = random_score_vectors(cfg.n_vectors, cfg.length, generator)
        self.targets = exact_ranks(self.vectors)
        sample = np.random.default_rng([self.seed, RECALIBRATION_PURPOSE]).permutation(cfg.n_vectors)
        self.recalibration = sample[:RECALIBRATION_VECTORS]
        self.quality: dict[str, Any] = {}
        self.n_train, self.n_test = cfg.n_vectors, cfg.eval_vectors

    def build(self) -> dict[str, nn.Module]:
        from ..models.sorter import Sorter

        return {"model": Sorter(self.model_config)}

    def optimizer(self, modules):
        return torch.optim.Adam(modules["model"].parameters(), lr=self.cfg.lr)

    def learning_rate(self, epoch: int, step: int, steps: int) -> float:
        from .asna import step_decay

        return step_decay(epoch, self.cfg.lr, self.cfg.decay, self.cfg.decay_every)

    def batches(self, epoch: int) -> list[np.ndarray]:
        from .perceptual import seeded_rng

        order = seeded_rng(self.seed, SHUFFLE_PURPOSE, epoch).permutation(self.cfg.n_vectors)
        return [order[k:k + self.cfg.batch_size] for k in range(0, len(order), self.cfg.batch_size)]

    def load(self, shard: Shard) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(np.asarray(shard.items, dtype=np.int64))
        return {"x": self.vectors[rows], "y": self.targets[rows]}

    def forward(self, modules, data, shard: Shard) -> dict[str, torch.Tensor]:
        return {"pred": modules["model"](data["x"].to(self.device)), "target": data["y"].to(self.device)}

    def loss(self, modules, outputs) -> torch.Tensor:
        return F.l1_loss(outputs["pred"], outputs["target"])

    def evaluate(self, modules) -> dict[str, Any]:
        from ..models.sorter import recalibrate_batch_norm, sorter_quality

        model = modules["model"]
        recalibrate_batch_norm(model, self.vectors[torch.as_tensor(self.recalibration)], self.cfg.batch_size,
                               self.device, part=_my_rows)
        quality = sorter_quality(_OnCpu(model, self.device), n_vectors=self.cfg.eval_vectors,
                                 n_pairs=self.cfg.eval_vectors, length=self.cfg.length)
        self.quality = quality.to_dict()
        return {"rank_error": quality.mean_abs_rank_error, "spearman_gap": quality.spearman_gap_mean,
                "spearman_gap_max": quality.spearman_gap_max}

    def checkpoint(self, modules) -> dict[str, Any]:
        from ..weights import family_checkpoint_payload

        return family_checkpoint_payload(METHOD, modules["model"], self.model_config.to_dict(),
                                         run_config=self.config, extra={"quality": dict(self.quality)})

    def restore(self, modules, checkpoint: dict[str, Any]) -> None:
        from .asna import restore_family_model

        restore_family_model(modules["model"], checkpoint, METHOD, self.cfg.run_dir / "latest.pth")


def _my_rows(n: int) -> slice:
    """This process's block of a batch of ``n`` (all of it in one process), as the loop shards
    training batches: synchronised BatchNorm then sees the batch once, not once per process."""
    from ..engine import shard_bounds

    block = shard_bounds(n)
    return slice(block.start, block.stop)


class _OnCpu(nn.Module):
    """A module on ``device`` called with CPU tensors (sorter_quality draws its vectors on the CPU)."""

    def __init__(self, module: nn.Module, device: torch.device):
        super().__init__()
        self.module, self.device = module, device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.device)).cpu()


def train_sorter_run(config: SorterTrainConfig, progress=None) -> TrainResult:
    """Run ``iqa train --method sorter`` (see the module docstring); under torchrun, on every process."""
    from .loop import LoopSettings, run

    cfg = validate_sorter_config(config)
    settings = LoopSettings(run_dir=cfg.run_dir, total_epochs=cfg.epochs, config=cfg.to_dict(), resume=cfg.resume,
                            seed_from_checkpoint=config.seed is None, resume_keys=RESUME_KEYS,
                            eval_every=cfg.eval_every, device=cfg.device, num_workers=cfg.num_workers,
                            stop_after_epoch=cfg.stop_after_epoch)
    return run(SorterRecipe(cfg), settings, progress)
