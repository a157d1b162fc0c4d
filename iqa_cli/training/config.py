"""The configuration and result of ``iqa train`` for the LPIPS family (MOS and BAPPS recipes):
one flat, frozen TrainConfig the CLI fills, checked once by ``validate_config``."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..losses import DEFAULT_TEMPERATURE, LOSSES

METHODS = ("mos", "bapps")  # the recipes train() runs (training/__init__.py)
BAPPS_TRAIN_SETS = ("train/traditional", "train/cnn", "train/mix")


@dataclass(frozen=True)
class TrainConfig:
    """Everything an ``iqa train`` run of the LPIPS family depends on. ``store`` (MOS method) or
    ``bapps_root`` (BAPPS method).

    name              run name: files go to ``checkpoints_dir/name/``
    method            "mos" or "bapps" (training/RECIPES); None: "bapps" with ``bapps_root``, else "mos"
    head              "graphics" (MLP heads) or "lpips" (linear heads); default: graphics for MOS,
                      lpips for BAPPS
    loss              MOS mode: "mse", "rank" (1 - soft Spearman) or "mse+rank" (mse + rank_weight *
                      rank); BAPPS mode always trains Dist2Logit with BCE
    rank_temperature  soft-rank temperature, in units of the batch's score standard deviation
    n_input_img       MOS mode: stimuli per optimiser step (a stimulus is never split), for the whole job:
                      under torchrun the step's stimuli are shared among the processes
    npatches          MOS mode: patches each stimulus contributes per epoch
    batch_size        BAPPS mode: triplets per optimiser step, for the whole job (as n_input_img)
    eval_batch_size   patch pairs per forward pass when scoring the test set (per process)
    nepoch, nepoch_decay  epochs at ``lr``, then epochs of linear decay (see ``learning_rate``)
    testset_freq      evaluate every this many epochs (and after the last one, and before the first)
    split             fraction of stimuli for training (random, by stimulus, seeded); None: the
                      store's split column when it labels every usable stimulus train/test, else 0.8
    train_csv, test_csv  CSV files with a ``stimulus`` column; one of them alone means "the rest"
    seed              None: a random seed, recorded in the checkpoint (and reused by resume)
    backbone_weights  a local backbone file instead of torchvision's ImageNet cache
    from_scratch      random backbone weights (torchvision's default init under the seed)
    stop_after_epoch  stop once this epoch has completed (a test hook for interrupted runs)
    """

    name: str
    method: str | None = None
    store: str | None = None
    bapps_root: str | None = None
    datasets: tuple[str, ...] = BAPPS_TRAIN_SETS
    val_datasets: tuple[str, ...] | None = None
    checkpoints_dir: str = "checkpoints"
    net: str = "alex"
    head: str | None = None
    version: str = "0.1"
    loss: str = "mse"
    rank_weight: float = 1.0
    rank_temperature: float = DEFAULT_TEMPERATURE
    n_input_img: int = 4
    npatches: int = 150
    batch_size: int = 50
    nepoch: int = 5
    nepoch_decay: int = 5
    lr: float = 1e-4
    beta1: float = 0.5
    testset_freq: int = 2
    split: float | None = None
    train_csv: str | None = None
    test_csv: str | None = None
    seed: int | None = None
    device: str = "auto"
    train_trunk: bool = False
    from_scratch: bool = False
    backbone_weights: str | None = None
    eval_batch_size: int = 256
    num_workers: int | None = None
    load_size: int = 64
    bapps_limit: int | None = None
    resume: bool = False
    stop_after_epoch: int | None = None

    def __post_init__(self) -> None:
        for key in ("store", "bapps_root", "train_csv", "test_csv", "backbone_weights", "checkpoints_dir"):
            value = getattr(self, key)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, key, str(value))
        for key in ("datasets", "val_datasets"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, key, (value,) if isinstance(value, str) else tuple(value))

    @property
    def mode(self) -> str:
        """The training method (recipe): ``method``, or what the inputs imply."""
        return self.method or ("bapps" if self.bapps_root is not None else "mos")

    @property
    def total_epochs(self) -> int:
        return int(self.nepoch) + int(self.nepoch_decay)

    @property
    def run_dir(self) -> Path:
        return Path(self.checkpoints_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("datasets", "val_datasets"):
            if d[key] is not None:
                d[key] = list(d[key])
        d["mode"] = self.mode
        return d


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Where and how a run of a recipe with its own config (asna, sorter) goes: the fields every
    such config shares (keyword-only, so they follow the recipe's own)."""

    name: str
    checkpoints_dir: str = "checkpoints"
    seed: int | None = None  # None: a random seed, recorded in the checkpoint (and reused by resume)
    device: str = "auto"
    num_workers: int | None = None
    resume: bool = False
    stop_after_epoch: int | None = None  # a test hook for interrupted runs

    @property
    def run_dir(self) -> Path:
        return Path(self.checkpoints_dir) / self.name


def _check_int(value, option: str, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise InvalidInputError(f"{option} must be an integer >= {minimum}, got {value}")


def check_run_name(name) -> None:
    """A run name is a plain folder name (the run folder is CHECKPOINTS_DIR/NAME)."""
    if not name or not str(name).strip() or Path(name).name != name or name in (".", ".."):
        raise InvalidInputError(f"--name {name!r}: expected a plain folder name (no '/'), e.g. --name my_run")


def resolve_seed(seed) -> int:
    """The run's seed: ``seed`` checked, or a fresh random one (recorded in the checkpoint) for None."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % (2 ** 31))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 64:
        raise InvalidInputError(f"--seed must be an integer from 0 to 2**64 - 1, got {seed}")  # torch seeds: 64-bit
    return int(seed)


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Check the options (explicit errors, never asserts) and fill defaults: returns the resolved config."""
    from ..models.heads import HEAD_TYPES
    from ..models.lpips import VERSIONS
    from ..registry import canonical_net

    check_run_name(cfg.name)
    if cfg.method is not None and cfg.method not in METHODS:
        raise InvalidInputError(f"--method {cfg.method}: TrainConfig runs {' or '.join(METHODS)}; the other methods "
                                f"have configs of their own ('iqa train --help' lists them all)")
    if cfg.method == "mos" and cfg.store is None:
        raise InvalidInputError("--method mos trains on a patch store: give STORE.h5 (from iqa patchify)")
    if cfg.method == "bapps" and cfg.bapps_root is None:
        raise InvalidInputError("--method bapps trains on BAPPS 2AFC judgments: give --bapps ROOT")
    if (cfg.store is None) == (cfg.bapps_root is None):
        raise InvalidInputError("give either a patch store (MOS training) or --bapps ROOT (BAPPS training), "
                                "not both" if cfg.store is not None else
                                "nothing to train on: give a patch store STORE.h5 or --bapps ROOT")
    head = cfg.head or ("lpips" if cfg.mode == "bapps" else "graphics")
    if head not in HEAD_TYPES:
        raise InvalidInputError(f"--head {head}: choose one of {', '.join(HEAD_TYPES)}")
    if cfg.version not in VERSIONS:
        raise InvalidInputError(f"--version {cfg.version}: choose one of {', '.join(VERSIONS)}")
    net = canonical_net(cfg.net)
    _check_int(cfg.nepoch, "--nepoch", 0)
    _check_int(cfg.nepoch_decay, "--nepoch_decay", 0)
    if cfg.nepoch + cfg.nepoch_decay < 1:
        raise InvalidInputError("--nepoch + --nepoch_decay must be at least 1 epoch")
    _check_int(cfg.testset_freq, "--testset_freq", 1)
    _check_int(cfg.eval_batch_size, "--eval-batch-size", 1)
    if not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise InvalidInputError(f"--lr must be a positive number, got {cfg.lr}")
    if not 0 <= cfg.beta1 < 1:
        raise InvalidInputError(f"beta1 must be in [0, 1), got {cfg.beta1}")
    if cfg.stop_after_epoch is not None:
        _check_int(cfg.stop_after_epoch, "stop_after_epoch", 0)
    if cfg.num_workers is not None:
        _check_int(cfg.num_workers, "--workers", 0)
    seed = resolve_seed(cfg.seed)
    if cfg.mode == "mos":
        if cfg.loss not in LOSSES:
            raise InvalidInputError(f"--loss {cfg.loss}: choose one of {', '.join(LOSSES)}")
        _check_int(cfg.npatches, "--npatches", 1)
        _check_int(cfg.n_input_img, "--nInputImg", 1)
        if cfg.loss != "mse" and cfg.n_input_img < 2:
            raise InvalidInputError(f"--loss {cfg.loss} ranks the stimuli of a batch: it needs --nInputImg >= 2, "
                                    f"got {cfg.n_input_img}")
        if not cfg.rank_temperature > 0:
            raise InvalidInputError(f"--rank-temperature must be > 0, got {cfg.rank_temperature}")
        if not cfg.rank_weight >= 0:
            raise InvalidInputError(f"--rank-weight must be >= 0, got {cfg.rank_weight}")
        if cfg.split is not None and (cfg.train_csv or cfg.test_csv):
            raise InvalidInputError("--split and --train-csv/--test-csv exclude each other: give one of them")
        if cfg.split is not None and not 0 < cfg.split < 1:
            raise InvalidInputError(f"--split is the training fraction, expected a number in (0, 1), got {cfg.split}")
    else:
        _check_int(cfg.batch_size, "--batch-size", 1)
        _check_int(cfg.load_size, "--load-size", 1)
        if cfg.bapps_limit is not None:
            _check_int(cfg.bapps_limit, "--limit", 1)
        if not cfg.datasets:
            raise InvalidInputError("--datasets: name at least one BAPPS training subset, e.g. train/traditional")
        if cfg.split is not None or cfg.train_csv or cfg.test_csv:
            raise InvalidInputError("--split, --train-csv and --test-csv apply to MOS training, not to --bapps")
        if cfg.loss != "mse":
            raise InvalidInputError(f"--loss {cfg.loss} applies to MOS training; --bapps training always fits "
                                    f"the Dist2Logit ranking network with BCE")
    return replace(cfg, method=cfg.mode, head=head, net=net, seed=int(seed))


# Options that must match for --resume to continue a run (others, e.g. nepoch or device, may change).
RESUME_KEYS = ("mode", "net", "head", "version", "loss", "rank_weight", "rank_temperature", "n_input_img",
               "npatches", "batch_size", "lr", "beta1", "seed", "split", "train_csv", "test_csv", "train_trunk",
               "from_scratch", "datasets", "load_size", "bapps_limit")
MOS_ONLY = {"loss", "rank_weight", "rank_temperature", "n_input_img", "npatches", "split", "train_csv", "test_csv"}
BAPPS_ONLY = {"batch_size", "datasets", "load_size", "bapps_limit"}


def resume_keys(cfg: TrainConfig) -> tuple[str, ...]:
    """The options a resumed run must share with the checkpoint's, for this config's method."""
    skip = BAPPS_ONLY if cfg.mode == "mos" else MOS_ONLY
    return tuple(k for k in RESUME_KEYS if k not in skip)
