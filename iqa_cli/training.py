"""Training: Graphics-LPIPS heads from mean opinion scores, LPIPS heads from BAPPS 2AFC judgments.

``train(TrainConfig(...))`` runs one of two loops and returns a frozen ``TrainResult``:

* MOS mode (``store=``): a patch store with MOS. Each epoch every training stimulus contributes
  ``npatches`` patches (``npatches // n`` full passes over its ``n`` patches plus
  ``npatches % n`` drawn without replacement), stimuli are reshuffled, and each optimiser step
  sees ``n_input_img`` whole stimuli. A stimulus's predicted score is the mean distance of its
  sampled patches; the loss is MSE against MOS, the soft-rank Spearman loss, or both.
* BAPPS mode (``bapps_root=``): 2AFC triplets, d0 = d(ref, p0) and d1 = d(ref, p1) through a
  Dist2Logit ranking network, BCE against the judge value, batches of ``batch_size`` triplets.

Both: Adam(lr, betas=(beta1, 0.999)); the learning rate is ``lr`` for epochs 1..nepoch, then
decays linearly over ``nepoch_decay`` epochs (see ``learning_rate``); every head weight is
clamped to >= 0 after every step; the backbone is frozen unless ``train_trunk``.

Run folder ``checkpoints_dir/name``: ``latest.pth`` (weights + config + everything a resume needs:
optimizer, epoch, RNG state, history), ``epoch_{k}.pth`` (weights + config), ``metrics.csv`` and
``curves.png``. Every file is written to a temporary name and renamed into place, so an
interrupted run (Ctrl-C, kill) leaves the last completed epoch's files intact; ``resume=True``
continues from ``latest.pth`` and, with a seed on the CPU, ends with exactly the weights an
uninterrupted run would have. ``latest.pth`` is written once before the first epoch too, so
a run interrupted during epoch 1 can also be resumed.

Reproducibility: the split and each epoch's sampling come from numpy generators seeded with
(seed, purpose, epoch), and the BAPPS shuffling from a torch generator seeded the same way, so they
need no saved state; head initialisation and dropout use torch's global generator, seeded with the
seed at the start and saved/restored with each checkpoint.
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import InvalidInputError, WeightsError
from .losses import DEFAULT_TEMPERATURE, LOSSES, BCERankingLoss, mos_loss

MODES = ("mos", "bapps")
BAPPS_TRAIN_SETS = ("train/traditional", "train/cnn", "train/mix")
MIN_TEST_STIMULI = 3  # the correlation statistics need at least three


# ---------------------------------------------------------------------------------------------
# configuration and result
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. ``store`` (MOS mode) or ``bapps_root`` (BAPPS mode).

    name              run name: files go to ``checkpoints_dir/name/``
    head              "graphics" (MLP heads) or "lpips" (linear heads); default: graphics for MOS,
                      lpips for BAPPS
    loss              MOS mode: "mse", "rank" (1 - soft Spearman) or "mse+rank" (mse + rank_weight *
                      rank); BAPPS mode always trains Dist2Logit with BCE
    rank_temperature  soft-rank temperature, in units of the batch's score standard deviation
    n_input_img       MOS mode: stimuli per optimiser step (a stimulus is never split)
    npatches          MOS mode: patches each stimulus contributes per epoch
    batch_size        BAPPS mode: triplets per optimiser step
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
        return "bapps" if self.bapps_root is not None else "mos"

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


@dataclass(frozen=True)
class TrainEvent:
    """What a progress callback receives.

    kind: "start" (``total`` units still to do in this call, ``unit`` stimuli|triplets),
    "step" (``n`` units done, batch ``loss``), "epoch" (``row``: the epoch's metrics row).
    """

    kind: str
    epoch: int
    total_epochs: int
    unit: str = "stimuli"
    total: int = 0
    n: int = 0
    loss: float | None = None
    row: dict | None = None


@dataclass(frozen=True)
class TrainResult:
    name: str
    mode: str
    run_dir: Path
    checkpoint: Path
    metrics_csv: Path
    curves_png: Path
    epochs_completed: int
    total_epochs: int
    resumed_from: int | None
    stopped_early: bool
    n_train: int
    n_test: int
    history: tuple[dict, ...]
    final: dict
    seconds: float
    config: dict
    model: Any = field(default=None, repr=False, compare=False)  # the trained PerceptualDistance (eval mode)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        for key in ("run_dir", "checkpoint", "metrics_csv", "curves_png"):
            d[key] = str(d[key])
        d["history"] = [dict(r) for r in self.history]
        d["final"] = dict(self.final)
        return d


Progress = Callable[[TrainEvent], None]


# ---------------------------------------------------------------------------------------------
# schedule, sampler, split
# ---------------------------------------------------------------------------------------------

def learning_rate(epoch: int, lr: float, nepoch: int, nepoch_decay: int) -> float:
    """The learning rate of 1-based ``epoch``.

    Epochs 1..nepoch use ``lr``; epoch nepoch + k (k = 1..nepoch_decay) uses
    lr * (nepoch_decay + 1 - k) / (nepoch_decay + 1): a straight line from ``lr`` (at epoch
    nepoch) to 0 (at epoch nepoch + nepoch_decay + 1), so every decay epoch still learns and the
    steps are equal. With 5 + 5: 1, 1, 1, 1, 1, 5/6, 4/6, 3/6, 2/6, 1/6 times lr.
    """
    if epoch < 1:
        raise ValueError(f"epochs count from 1, got {epoch}")
    if epoch <= nepoch:
        return float(lr)
    k = epoch - nepoch
    if k > nepoch_decay:
        return 0.0
    return float(lr) * (nepoch_decay + 1 - k) / (nepoch_decay + 1)


def stimulus_patch_sample(n: int, npatches: int, rng: np.random.Generator) -> np.ndarray:
    """Local patch indices one stimulus with ``n`` patches contributes to an epoch:
    ``npatches // n`` full passes over 0..n-1 plus ``npatches % n`` drawn without replacement."""
    full = np.tile(np.arange(n, dtype=np.int64), npatches // n)
    extra = rng.choice(n, size=npatches % n, replace=False).astype(np.int64)
    return np.concatenate([full, np.sort(extra)])


def epoch_batches(counts: Sequence[int], npatches: int, n_input_img: int, rng: np.random.Generator
                  ) -> list[list[tuple[int, np.ndarray]]]:
    """One epoch's batches: ``[[(stimulus position, local patch indices), ...], ...]``.

    ``counts[i]`` is the patch count of training stimulus i. Stimuli are shuffled, each appears
    exactly once, and batches hold ``n_input_img`` whole stimuli (the last one may hold fewer).
    """
    order = rng.permutation(len(counts))
    samples = [(int(i), stimulus_patch_sample(int(counts[i]), npatches, rng)) for i in order]
    return [samples[k:k + n_input_img] for k in range(0, len(samples), n_input_img)]


def _seeded_rng(seed: int, *purpose: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *purpose])


SPLIT_PURPOSE, SAMPLE_PURPOSE, SHUFFLE_PURPOSE = 1, 2, 3


@dataclass(frozen=True)
class Split:
    train: tuple[int, ...]  # rows of store.stimuli
    test: tuple[int, ...]
    source: str  # "csv" | "store" | "random"
    skipped: int  # stimuli left out: no MOS, no patches or flagged


def _csv_stimuli(path: str, option: str) -> list[str]:
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"{option} {path}: no such file")
    try:
        table = pd.read_csv(p, dtype=str, skipinitialspace=True)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{option} {path}: not a readable CSV ({str(exc).splitlines()[0][:100]})") from None
    columns = {str(c).strip().lstrip("\ufeff").lower(): c for c in table.columns}
    if "stimulus" not in columns:
        raise InvalidInputError(f"{option} {path}: expected a 'stimulus' column, found "
                                f"{', '.join(map(str, table.columns)) or 'no columns'}")
    names = [str(s).strip() for s in table[columns["stimulus"]].dropna()]
    return list(dict.fromkeys(n for n in names if n))


def make_split(stimuli, cfg: TrainConfig, seed: int) -> Split:
    """Which stimuli train and which test (see TrainConfig.split for the rule)."""
    names = stimuli["stimulus"].astype(str).to_numpy()
    mos = stimuli["mos"].to_numpy(dtype=float)
    usable = np.isfinite(mos) & (stimuli["count"].to_numpy() > 0) & (stimuli["flag"].astype(str).to_numpy() == "")
    skipped = int((~usable).sum())
    row_of = {n: i for i, n in enumerate(names)}
    need_train = 2 if cfg.loss != "mse" else 1

    def check(train: list[int], test: list[int], how: str) -> None:
        if len(test) < MIN_TEST_STIMULI or len(train) < need_train:
            raise InvalidInputError(
                f"too few stimuli for the split: {how} gives {len(train)} training and {len(test)} test "
                f"stimuli; training needs at least {need_train} and testing at least {MIN_TEST_STIMULI} "
                f"(add stimuli with MOS, or change --split / the split CSVs)")

    if cfg.train_csv or cfg.test_csv:
        chosen: dict[str, list[int]] = {}
        for key, path, option in (("train", cfg.train_csv, "--train-csv"), ("test", cfg.test_csv, "--test-csv")):
            if path is None:
                continue
            listed = _csv_stimuli(path, option)
            unknown = [n for n in listed if n not in row_of]
            if unknown:
                more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
                raise InvalidInputError(f"{option} {path}: {len(unknown)} stimuli are not in the store: "
                                        f"{', '.join(unknown[:5])}{more} (check the names against the store's "
                                        f"stimulus column)")
            chosen[key] = [row_of[n] for n in listed if usable[row_of[n]]]
        if "train" in chosen and "test" in chosen:
            both = sorted(set(chosen["train"]) & set(chosen["test"]))
            if both:
                raise InvalidInputError(f"{len(both)} stimuli are in both --train-csv and --test-csv: "
                                        f"{', '.join(names[i] for i in both[:5])}")
        listed = set(chosen.get("train", [])) | set(chosen.get("test", []))
        rest = [int(i) for i in np.flatnonzero(usable) if int(i) not in listed]
        train = chosen.get("train", rest if "train" not in chosen else [])
        test = chosen.get("test", rest if "test" not in chosen else [])
        check(train, test, "the split CSVs")
        return Split(tuple(int(i) for i in train), tuple(int(i) for i in test), "csv", skipped)

    rows = np.flatnonzero(usable)
    if cfg.split is None:
        labels = stimuli["split"].astype(str).str.strip().str.lower().to_numpy()
        used = labels[rows]
        if len(rows) and set(used) <= {"train", "test"} and {"train", "test"} <= set(used):
            train = [int(i) for i in rows if labels[i] == "train"]
            test = [int(i) for i in rows if labels[i] == "test"]
            check(train, test, "the store's split column")
            return Split(tuple(train), tuple(test), "store", skipped)
    fraction = 0.8 if cfg.split is None else float(cfg.split)
    order = rows[np.argsort(names[rows], kind="stable")]  # independent of the store's row order
    perm = _seeded_rng(seed, SPLIT_PURPOSE).permutation(order)
    n_train = int(round(fraction * len(perm)))
    train, test = sorted(int(i) for i in perm[:n_train]), sorted(int(i) for i in perm[n_train:])
    check(train, test, f"--split {fraction:g} of {len(rows)} usable stimuli (with MOS and patches)")
    return Split(tuple(train), tuple(test), "random", skipped)


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------

def _check_int(value, option: str, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise InvalidInputError(f"{option} must be an integer >= {minimum}, got {value}")


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Check the options (explicit errors, never asserts) and fill defaults: returns the resolved config."""
    from .models.heads import HEAD_TYPES
    from .models.lpips import VERSIONS
    from .registry import canonical_net

    if not cfg.name or not str(cfg.name).strip() or Path(cfg.name).name != cfg.name or cfg.name in (".", ".."):
        raise InvalidInputError(f"--name {cfg.name!r}: expected a plain folder name (no '/'), e.g. --name my_run")
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
    seed = cfg.seed
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2 ** 31))
    elif not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 64:  # torch seeds are 64-bit
        raise InvalidInputError(f"--seed must be an integer from 0 to 2**64 - 1, got {seed}")
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
    return replace(cfg, head=head, net=net, seed=int(seed))


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def init_heads_(heads: torch.nn.Module) -> None:
    """Fresh heads: every 1x1 weight drawn from U(0, 1/sqrt(fan_in)).

    That is PyTorch's default conv init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), folded onto >= 0:
    the usual fan-in scale, but already inside the set the clamp projects onto, so the untrained
    distance is a positive combination of the squared feature differences (monotone, zero for
    identical images) and no weight starts clamped dead at 0. Uses torch's global generator.
    """
    for module in heads.modules():
        if isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1):
            bound = 1.0 / math.sqrt(module.in_channels)
            module.weight.uniform_(0.0, bound)


def build_model(cfg: TrainConfig):
    """A PerceptualDistance with fresh heads on the configured backbone (CPU, train mode)."""
    from .models.backbones import BACKBONES, Backbone
    from .models.lpips import PerceptualDistance
    from .weights import load_backbone_weights

    spec = BACKBONES[cfg.net]
    model = PerceptualDistance(spec, version=cfg.version, head_type=cfg.head, spatial=False, backbone=Backbone(spec))
    source = "random" if cfg.from_scratch else (cfg.backbone_weights or "imagenet")
    load_backbone_weights(model.net, spec, source)
    init_heads_(model.heads_module())
    model.freeze_backbone(not cfg.train_trunk)
    return model


def _saves_backbone(cfg: TrainConfig) -> bool:
    """Checkpoints carry the backbone whenever it is not torchvision's ImageNet one (trained,
    random or from a local file), so they load anywhere with just --checkpoint."""
    return bool(cfg.train_trunk or cfg.from_scratch or cfg.backbone_weights)


# Options that must match for --resume to continue a run (others, e.g. nepoch or device, may change).
RESUME_KEYS = ("mode", "net", "head", "version", "loss", "rank_weight", "rank_temperature", "n_input_img",
               "npatches", "batch_size", "lr", "beta1", "seed", "split", "train_csv", "test_csv", "train_trunk",
               "from_scratch", "datasets", "load_size", "bapps_limit")
MOS_ONLY = {"loss", "rank_weight", "rank_temperature", "n_input_img", "npatches", "split", "train_csv", "test_csv"}
BAPPS_ONLY = {"batch_size", "datasets", "load_size", "bapps_limit"}


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


def _read_resume_state(path: Path, cfg: TrainConfig, user_seed: int | None) -> tuple[TrainConfig, dict, dict]:
    """Load latest.pth for --resume; check it belongs to this kind of run. Returns the config to
    use (seed taken from the checkpoint when none was given), the raw payload and its training state."""
    from .weights import CHECKPOINT_FORMAT, read_state_file

    raw = read_state_file(path)
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT or not isinstance(raw.get("training"), dict):
        raise WeightsError(f"--resume: {path} is not a training checkpoint written by 'iqa train' (no training "
                           f"state); start a new run with another --name")
    saved = dict(raw.get("config") or {})
    if user_seed is None and "seed" in saved:
        cfg = replace(cfg, seed=int(saved["seed"]))
    mine = cfg.to_dict()
    skip = BAPPS_ONLY if cfg.mode == "mos" else MOS_ONLY
    diffs = [f"{k}={_norm(saved.get(k))!r} (now {_norm(mine[k])!r})" for k in RESUME_KEYS
             if k not in skip and _norm(saved.get(k)) != _norm(mine[k])]
    if diffs:
        raise WeightsError(f"--resume: {path} was written by an incompatible run: {'; '.join(diffs[:4])}"
                           f"{' ...' if len(diffs) > 4 else ''} (use the same options, or a new --name)")
    return cfg, raw, raw["training"]


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------

MOS_COLUMNS = ("epoch", "lr", "train_loss", "test_loss", "test_rmse", "test_srocc", "test_plcc", "seconds",
               "units_per_s")
BAPPS_COLUMNS = ("epoch", "lr", "train_loss", "train_2afc", "val_2afc", "seconds", "units_per_s")


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_metrics_csv(path: Path, history: Sequence[dict], columns: Sequence[str]) -> Path:
    extra = sorted({k for row in history for k in row} - set(columns))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*columns, *extra])
        for row in history:
            writer.writerow([_fmt(row.get(c)) for c in (*columns, *extra)])
    os.replace(tmp, path)
    return path


def write_curves(path: Path, history: Sequence[dict], mode: str) -> Path:
    """Loss and the test agreement per epoch as a PNG (matplotlib's Agg canvas; no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def series(key):
        pts = [(r["epoch"], r[key]) for r in history if r.get(key) is not None and not _isnan(r[key])]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_corr = fig.subplots(1, 2)
    x, y = series("train_loss")
    ax_loss.plot(x, y, "o-", label="train")
    if mode == "mos":
        x, y = series("test_loss")
        ax_loss.plot(x, y, "s--", label="test")
        for key, label in (("test_srocc", "test SROCC"), ("test_plcc", "test PLCC")):
            x, y = series(key)
            ax_corr.plot(x, y, "o-", label=label)
        ax_corr.set_ylabel("correlation")
    else:
        for key, label in (("train_2afc", "train 2AFC"), ("val_2afc", "val 2AFC")):
            x, y = series(key)
            ax_corr.plot(x, y, "o-", label=label)
        ax_corr.set_ylabel("2AFC score")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_corr.set_xlabel("epoch")
    for ax in (ax_loss, ax_corr):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def _isnan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


# ---------------------------------------------------------------------------------------------
# MOS data
# ---------------------------------------------------------------------------------------------

class MOSBatches(Dataset):
    """One epoch's batches read from the store; item k is batch k, whole.

    Returns uint8 distorted patches (P, s, s, 3), the batch's distinct reference patches
    (U, s, s, 3) with ``ref_index`` (P,) into them (a reference patch shared by several sampled
    patches, or by several stimuli of one model, is read and run through the backbone once),
    ``slot`` (P,) the batch position of each patch's stimulus, and ``mos`` (B,).
    """

    def __init__(self, store, batches, first: np.ndarray, mos: np.ndarray, refs: np.ndarray):
        self.store = store
        self.batches = batches
        self.first = first
        self.mos = mos
        self.refs = refs

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        batch = self.batches[k]
        rows = np.concatenate([self.first[s] + local for s, local in batch])
        slot = np.concatenate([np.full(len(local), j, dtype=np.int64) for j, (_, local) in enumerate(batch)])
        uniq, inverse = np.unique(self.refs[rows], return_inverse=True)
        return {
            "dist": torch.from_numpy(self.store.read_distorted_rows(rows)),
            "ref": torch.from_numpy(self.store.read_reference_rows(uniq)),
            "ref_index": torch.from_numpy(inverse.reshape(-1).astype(np.int64)),
            "slot": torch.from_numpy(slot),
            "mos": torch.tensor([self.mos[s] for s, _ in batch], dtype=torch.float32),
        }


def _stimulus_means(d: torch.Tensor, slot: torch.Tensor, n: int) -> torch.Tensor:
    sums = torch.zeros(n, dtype=d.dtype, device=d.device).index_add(0, slot, d)
    counts = torch.zeros(n, dtype=d.dtype, device=d.device).index_add(0, slot, torch.ones_like(d))
    return sums / counts


def _pair_distances(model, ref: torch.Tensor, dist: torch.Tensor, ref_index: torch.Tensor, trunk: bool
                    ) -> torch.Tensor:
    """d(ref[ref_index[i]], dist[i]) for every i, one backbone pass over the distinct patches."""
    with torch.set_grad_enabled(trunk and torch.is_grad_enabled()):
        feats = model.features(torch.cat([ref, dist]))
    u = ref.shape[0]
    feats_ref = [f[:u][ref_index] for f in feats]
    feats_dist = [f[u:] for f in feats]
    return model.distance_from_features(feats_ref, feats_dist)


# ---------------------------------------------------------------------------------------------
# the loop shared by both modes
# ---------------------------------------------------------------------------------------------

class _Run:
    """State of one train() call: folder, model, optimiser, history; saving and resuming."""

    def __init__(self, cfg: TrainConfig, device: torch.device, model, extra_modules: dict[str, torch.nn.Module],
                 progress: Progress | None, unit: str):
        self.cfg = cfg
        self.device = device
        self.model = model
        self.extra_modules = extra_modules  # e.g. the Dist2Logit ranker: trained, saved, not clamped
        self.progress = progress
        self.unit = unit
        self.run_dir = cfg.run_dir
        self.latest = self.run_dir / "latest.pth"
        params = [p for p in model.heads_module().parameters()]
        if cfg.train_trunk:
            params += list(model.net.parameters())
        for module in extra_modules.values():
            params += list(module.parameters())
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, 0.999))
        self.history: list[dict] = []
        self.epoch = 0
        self.resumed_from: int | None = None
        self.meta: dict = {}

    def emit(self, **kwargs) -> None:
        if self.progress is not None:
            self.progress(TrainEvent(total_epochs=self.cfg.total_epochs, unit=self.unit, **kwargs))

    def begin(self, fresh: bool, evaluate: Callable[[], dict], columns: Sequence[str], units_per_epoch: int) -> None:
        """On a fresh run, evaluate and save the untrained model as epoch 0; then announce the
        epochs this call will train (the progress bar's total)."""
        if fresh:
            row = {"epoch": 0, "lr": None, "train_loss": None, **evaluate()}
            self.history.append(row)
            self.save(0)
            self.write_logs(columns)
            self.emit(kind="epoch", epoch=0, row=row)
        remaining = self.cfg.total_epochs - self.epoch
        if self.cfg.stop_after_epoch is not None:
            remaining = max(0, min(remaining, self.cfg.stop_after_epoch - self.epoch))
        self.emit(kind="start", epoch=self.epoch, total=remaining * units_per_epoch)

    def set_lr(self, epoch: int) -> float:
        lr = learning_rate(epoch, self.cfg.lr, self.cfg.nepoch, self.cfg.nepoch_decay)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self, loss: torch.Tensor) -> None:
        from .models.heads import clamp_nonnegative

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        clamp_nonnegative(self.model.heads_module())

    def save(self, epoch: int) -> None:
        from .weights import save_checkpoint

        cfg = self.cfg
        config = cfg.to_dict()
        training = {"epoch": epoch, "total_epochs": cfg.total_epochs, "optimizer": self.optimizer.state_dict(),
                    "rng": _rng_state(self.device), "history": [dict(r) for r in self.history],
                    "extra_modules": {k: {n: t.detach().cpu() for n, t in m.state_dict().items()}
                                      for k, m in self.extra_modules.items()},
                    **self.meta}
        common = dict(model=self.model, net=cfg.net, version=cfg.version, head_type=cfg.head, config=config,
                      include_backbone=_saves_backbone(cfg))
        if epoch > 0:
            save_checkpoint(self.run_dir / f"epoch_{epoch}.pth", extra={"epoch": epoch}, **common)
        save_checkpoint(self.latest, extra={"epoch": epoch, "training": training}, **common)

    def restore(self, raw: dict, training: dict) -> None:
        from .weights import load_strict

        state = raw["state_dict"]
        heads = {k: v for k, v in state.items() if k.startswith("lin")}
        load_strict(self.model.heads_module(), heads, source=f"{self.latest} heads")
        backbone = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
        if backbone:
            load_strict(self.model.net, backbone, source=f"{self.latest} backbone")
        for key, module in self.extra_modules.items():
            load_strict(module, training.get("extra_modules", {}).get(key, {}), source=f"{self.latest} {key}")
        try:
            self.optimizer.load_state_dict(training["optimizer"])
        except (ValueError, KeyError) as exc:
            raise WeightsError(f"--resume: {self.latest}: optimizer state does not fit this run ({exc})") from None
        self.history = [dict(r) for r in training.get("history", [])]
        self.epoch = int(training["epoch"])
        self.resumed_from = self.epoch
        _set_rng_state(training["rng"], self.device)

    def write_logs(self, columns: Sequence[str]) -> tuple[Path, Path]:
        csv_path = write_metrics_csv(self.run_dir / "metrics.csv", self.history, columns)
        png_path = write_curves(self.run_dir / "curves.png", self.history, self.cfg.mode)
        return csv_path, png_path


def train(config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Run the configured training (MOS or BAPPS mode); see the module docstring."""
    user_seed = config.seed
    cfg = validate_config(config)
    if cfg.mode == "mos":
        return _train_mos(cfg, user_seed, progress)
    return _train_bapps(cfg, user_seed, progress)


def _resume_or_new(cfg: TrainConfig, user_seed: int | None) -> tuple[TrainConfig, dict | None, dict | None]:
    """Check the run folder (nothing is written yet): a new run must not overwrite one; --resume
    needs a compatible latest.pth. Returns the config to use and, when resuming, the payload."""
    from .io.files import check_output_path

    check_output_path(cfg.run_dir, "--checkpoints-dir / --name", folder=True)
    latest = cfg.run_dir / "latest.pth"
    if latest.is_dir():
        raise InvalidInputError(f"{latest}: is a folder, not a checkpoint; move it away, or choose another --name")
    if not cfg.resume:
        if latest.exists():
            raise InvalidInputError(f"{cfg.run_dir} already holds a run: pass --resume to continue it, or choose "
                                    f"another --name (or delete the folder)")
        return cfg, None, None
    if not latest.is_file():
        raise InvalidInputError(f"--resume: no checkpoint to resume at {latest} (drop --resume to start the run)")
    return _read_resume_state(latest, cfg, user_seed)


def _start(cfg: TrainConfig, raw: dict | None, training: dict | None, extra_modules_factory: Callable[[], dict],
           progress: Progress | None, unit: str) -> _Run:
    """Create the run folder, build the model (fresh heads under the seed) and optimiser on the
    device, and restore the checkpoint's state when resuming."""
    from .engine import resolve_device

    device = resolve_device(cfg.device)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    extra = extra_modules_factory()
    model.to(device)
    for module in extra.values():
        module.to(device)
    run = _Run(cfg, device, model, extra, progress, unit)
    if training is not None:
        run.restore(raw, training)
    return run


def _finish(run: _Run, start_time: float, n_train: int, n_test: int, stopped: bool, columns) -> TrainResult:
    cfg = run.cfg
    csv_path, png_path = run.write_logs(columns)
    evaluated = [r for r in run.history if any(r.get(k) is not None for k in ("test_srocc", "val_2afc"))]
    final = dict(evaluated[-1]) if evaluated else {}
    run.model.eval()
    return TrainResult(name=cfg.name, mode=cfg.mode, run_dir=run.run_dir, checkpoint=run.latest,
                       metrics_csv=csv_path, curves_png=png_path, epochs_completed=run.epoch,
                       total_epochs=cfg.total_epochs, resumed_from=run.resumed_from, stopped_early=stopped,
                       n_train=n_train, n_test=n_test, history=tuple(dict(r) for r in run.history), final=final,
                       seconds=time.perf_counter() - start_time, config=cfg.to_dict(), model=run.model)


def _should_eval(epoch: int, cfg: TrainConfig) -> bool:
    return epoch == 0 or epoch % cfg.testset_freq == 0 or epoch == cfg.total_epochs


def _should_stop(epoch: int, cfg: TrainConfig) -> bool:
    return cfg.stop_after_epoch is not None and epoch >= cfg.stop_after_epoch and epoch < cfg.total_epochs


# ---------------------------------------------------------------------------------------------
# MOS mode
# ---------------------------------------------------------------------------------------------

def evaluate_mos(model, store, rows: Sequence[int], cfg: TrainConfig, device: torch.device) -> dict:
    """Test-set scores exactly as score-mesh-db computes them (mean over a stimulus's patches of
    min(d, 1), model in eval mode), then the configured loss, raw RMSE, and SROCC/PLCC after the
    same fit score-mesh-db uses (binomial GLM for MOS in [0, 1], else the VQEG 4-parameter logistic)."""
    from .stats.correlation import correlation_report
    from .score_db import stimulus_scores

    rows = np.asarray(rows, dtype=np.int64)
    mos = store.stimuli["mos"].to_numpy(dtype=float)[rows]
    was_training = model.training
    model.eval()
    try:
        scores = np.asarray(stimulus_scores(store, model, stimuli=rows, batch_size=cfg.eval_batch_size,
                                            device=device, num_workers=cfg.num_workers), dtype=float)
    finally:
        model.train(was_training)
    keep = np.isfinite(scores)
    pred, target = torch.from_numpy(scores[keep]), torch.from_numpy(mos[keep])
    loss = float(mos_loss(cfg.loss, pred, target, cfg.rank_weight, cfg.rank_temperature))
    fit = "glm" if mos.min() >= 0 and mos.max() <= 1 else "vqeg4"
    report = correlation_report(scores, mos, fit=fit)
    return {"test_loss": loss, "test_rmse": float(np.sqrt(np.mean((scores[keep] - mos[keep]) ** 2))),
            "test_srocc": report.srocc, "test_plcc": report.plcc, "fit": fit}


def _open_store(path: str):
    from .io.store import PatchStore

    store = PatchStore.open(path)
    if not store.has_mos:
        raise InvalidInputError(f"{path}: the store has no MOS, so there is nothing to train on (rebuild it with "
                                f"iqa patchify from a database CSV with a MOS column)")
    return store


def _train_mos(cfg: TrainConfig, user_seed: int | None, progress: Progress | None) -> TrainResult:
    from .engine import make_loader, to_device_float

    t0 = time.perf_counter()
    store = _open_store(cfg.store)
    from .engine import check_store_patch_size
    from .models.backbones import BACKBONES

    check_store_patch_size(store, BACKBONES[cfg.net])  # before the run folder is created
    stimuli = store.stimuli
    cfg, raw, training = _resume_or_new(cfg, user_seed)
    split = make_split(stimuli, cfg, cfg.seed)  # before anything is written: bad input leaves no folder
    names = stimuli["stimulus"].astype(str).tolist()
    saved = (training or {}).get("split")
    if saved and (sorted(names[i] for i in split.train) != sorted(saved["train"])
                  or sorted(names[i] for i in split.test) != sorted(saved["test"])):
        raise WeightsError(f"--resume: {cfg.run_dir / 'latest.pth'} was trained on another train/test split "
                           f"(the store or the split CSVs changed); use a new --name")
    run = _start(cfg, raw, training, dict, progress, "stimuli")
    device = run.device
    run.meta = {"split": {"train": [names[i] for i in split.train], "test": [names[i] for i in split.test],
                          "source": split.source}, "store_fingerprint": store.fingerprint}
    first = stimuli["first"].to_numpy(dtype=np.int64)
    counts = stimuli["count"].to_numpy(dtype=np.int64)
    mos = stimuli["mos"].to_numpy(dtype=float)
    refs = store.patch_refs(0, store.n_patches)
    train_rows = np.asarray(split.train, dtype=np.int64)
    model = run.model

    run.begin(training is None, lambda: _drop_fit(evaluate_mos(model, store, split.test, cfg, device)), MOS_COLUMNS,
              len(train_rows))
    stopped = False
    for epoch in range(run.epoch + 1, cfg.total_epochs + 1):
        if _should_stop(run.epoch, cfg):
            stopped = True
            break
        tic = time.perf_counter()
        lr = run.set_lr(epoch)
        rng = _seeded_rng(cfg.seed, SAMPLE_PURPOSE, epoch)
        batches = epoch_batches(counts[train_rows], cfg.npatches, cfg.n_input_img, rng)
        batches = [[(int(train_rows[i]), local) for i, local in batch] for batch in batches]
        data = MOSBatches(store, batches, first, mos, refs)
        loader = make_loader(data, batch_size=None, device=device, num_workers=cfg.num_workers)
        model.train()
        total_loss = 0.0
        seen = 0
        for batch in loader:
            dist = to_device_float(batch["dist"], device)
            ref = to_device_float(batch["ref"], device)
            target = batch["mos"].to(device)
            d = _pair_distances(model, ref, dist, batch["ref_index"].to(device), cfg.train_trunk)
            pred = _stimulus_means(d, batch["slot"].to(device), len(target))
            loss = mos_loss(cfg.loss, pred, target, cfg.rank_weight, cfg.rank_temperature)
            run.step(loss)
            value = float(loss.detach())
            total_loss += value * len(target)
            seen += len(target)
            run.emit(kind="step", epoch=epoch, n=len(target), loss=value)
        seconds = time.perf_counter() - tic
        row = {"epoch": epoch, "lr": lr, "train_loss": total_loss / max(seen, 1), "seconds": seconds,
               "units_per_s": seen / seconds if seconds > 0 else None}
        if _should_eval(epoch, cfg):
            row.update(_drop_fit(evaluate_mos(model, store, split.test, cfg, device)))
        run.history.append(row)
        run.epoch = epoch
        run.save(epoch)
        run.write_logs(MOS_COLUMNS)
        run.emit(kind="epoch", epoch=epoch, row=row)
    if _should_stop(run.epoch, cfg):
        stopped = True
    return _finish(run, t0, len(split.train), len(split.test), stopped, MOS_COLUMNS)


def _drop_fit(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "fit"}


# ---------------------------------------------------------------------------------------------
# BAPPS mode
# ---------------------------------------------------------------------------------------------

def _bapps_subsets(cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """(training subsets, validation subsets), checked against the tree. A bare training name
    (``mix``) means ``train/mix``; validation defaults to every ``val/*`` subset present."""
    from .datasets.bapps import list_subsets, resolve_subsets

    wanted = [d if "/" in str(d).strip("/") else f"train/{str(d).strip('/')}" for d in cfg.datasets]
    train_sets = resolve_subsets(cfg.bapps_root, "2afc", wanted)
    if cfg.val_datasets is None:
        val_sets = [s for s in list_subsets(cfg.bapps_root, "2afc") if s.startswith("val/")]
    else:
        val_sets = resolve_subsets(cfg.bapps_root, "2afc", list(cfg.val_datasets)) if cfg.val_datasets else []
    return train_sets, val_sets


def _triplet(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch["ref"], batch["p0"], batch["p1"], batch["judge"]


def two_afc_agreement(d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> torch.Tensor:
    """Per-triplet 2AFC score: [d0<d1](1-h) + [d1<d0]h + 0.5[d0==d1]."""
    d0, d1, h = d0.flatten(), d1.flatten(), judge.flatten().to(d0.dtype)
    return (d0 < d1).to(d0.dtype) * (1 - h) + (d1 < d0).to(d0.dtype) * h + 0.5 * (d0 == d1).to(d0.dtype)


def evaluate_bapps(model, cfg: TrainConfig, subsets: Sequence[str], device: torch.device) -> dict:
    """2AFC scores on the validation subsets through eval-bapps' own code (eval mode)."""
    from .bapps_eval import eval_bapps

    report = eval_bapps(cfg.bapps_root, mode="2afc", subsets=list(subsets), metric=model, batch_size=cfg.batch_size,
                        device=device, limit=cfg.bapps_limit, num_workers=cfg.num_workers)
    row = {f"val_{name.replace('val/', '', 1).replace('/', '_')}": float(v) for name, v in report.scores.items()}
    row["val_2afc"] = float(report.mean)
    return row


def _train_bapps(cfg: TrainConfig, user_seed: int | None, progress: Progress | None) -> TrainResult:
    from .engine import make_loader, to_device_float

    from torch.utils.data import ConcatDataset

    from .datasets.bapps import TwoAFCDataset

    t0 = time.perf_counter()
    train_names, val_subsets = _bapps_subsets(cfg)
    train_set = ConcatDataset([TwoAFCDataset(cfg.bapps_root, name, load_size=cfg.load_size, limit=cfg.bapps_limit)
                               for name in train_names])
    cfg, raw, training = _resume_or_new(cfg, user_seed)
    run = _start(cfg, raw, training, lambda: {"ranker": BCERankingLoss()}, progress, "triplets")
    device = run.device
    model, ranker = run.model, run.extra_modules["ranker"]

    def evaluate() -> dict:
        return evaluate_bapps(model, cfg, val_subsets, device) if val_subsets else {}

    run.begin(training is None, evaluate, BAPPS_COLUMNS, len(train_set))
    stopped = False
    for epoch in range(run.epoch + 1, cfg.total_epochs + 1):
        if _should_stop(run.epoch, cfg):
            stopped = True
            break
        tic = time.perf_counter()
        lr = run.set_lr(epoch)
        generator = torch.Generator().manual_seed(int(_seeded_rng(cfg.seed, SHUFFLE_PURPOSE, epoch).integers(2 ** 62)))
        loader = make_loader(train_set, batch_size=cfg.batch_size, device=device, num_workers=cfg.num_workers,
                             shuffle=True, generator=generator)
        model.train()
        ranker.train()
        total_loss = total_agree = 0.0
        seen = 0
        for batch in loader:
            ref, p0, p1, judge = _triplet(batch)
            n = ref.shape[0]
            x = to_device_float(torch.cat([ref, p0, p1]), device)
            judge = judge.to(device).float().flatten()
            with torch.set_grad_enabled(cfg.train_trunk):
                feats = model.features(x)
            fr = [f[:n] for f in feats]
            d0 = model.distance_from_features(fr, [f[n:2 * n] for f in feats])
            d1 = model.distance_from_features(fr, [f[2 * n:] for f in feats])
            loss = ranker(d0, d1, judge)
            run.step(loss)
            value = float(loss.detach())
            total_loss += value * n
            total_agree += float(two_afc_agreement(d0.detach(), d1.detach(), judge).sum())
            seen += n
            run.emit(kind="step", epoch=epoch, n=n, loss=value)
        seconds = time.perf_counter() - tic
        row = {"epoch": epoch, "lr": lr, "train_loss": total_loss / max(seen, 1),
               "train_2afc": total_agree / max(seen, 1), "seconds": seconds,
               "units_per_s": seen / seconds if seconds > 0 else None}
        if _should_eval(epoch, cfg):
            row.update(evaluate())
        run.history.append(row)
        run.epoch = epoch
        run.save(epoch)
        run.write_logs(BAPPS_COLUMNS)
        run.emit(kind="epoch", epoch=epoch, row=row)
    if _should_stop(run.epoch, cfg):
        stopped = True
    return _finish(run, t0, len(train_set), 0, stopped, BAPPS_COLUMNS)
