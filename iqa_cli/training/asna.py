"""The ASNA recipe (NTIRE 2021, team MACS): ``iqa train --method asna DB``.

Data. Any full-reference database a reader turns into a QualityTable (TID2013/2008, KADID-10k,
PIPAL, PieAPP's per-image test scores, LIVE, CSIQ, a CSV with references); rows without a human
score are left out. Images stream from the database's HDF5 image cache (datasets/cache.py, built on
first use) or, without one, from the files.

Split. The database's protocol (``QualityTable.splits``), seeded by the run's seed: by reference
content for synthetic databases, so no content is on two sides; the official split where the
database has one with training rows (PieAPP's per-image scores are all "test": split by content).
A validation part, ``val_fraction`` of the training contents (seeded too), is carved out of the
training part to choose the best epoch; the test part is only reported. The original drew its
validation pairs per chunk, unseeded, differently for its two generators: its splits leaked.

Targets. Scores are standardised, z = (y - mean) / std: with the original's constants for TID and
PIPAL (``STANDARDISATION``), else with the training part's mean and standard deviation; std is
negative for a lower-is-better score (DMOS, PieAPP's error), so z, and the network, always read
higher = better.

Pairs. Each item of a step is a table row: its pair grown to the crop size where smaller (zero
padding, the original's PieAPP rule, or a resize), one ``size`` x ``size`` crop at the same place in
both images (random by default; "center" is the original's TID crop), then the original's
augmentation (quarter turn, flips, Lab lightness x U(0.3, 1.5), clipped instead of wrapping around
in uint8), the same for both images. Everything random comes from the item's seed (loop.Shard), so
a step draws the same on any number of processes. Steps hold exactly ``batch_size`` pairs (the
last partial batch of an epoch is dropped: the learned sorter ranks exactly 16 scores, and a
correlation over a handful of pairs is noise). The network is fed [reference, distorted]
(``order="ref-dist"``, as the original's pretraining and AsnaMetric's default).

Loss. m MSE + (1 - m)(1 - r^2) + s rank term over the whole global batch (losses/asna.py); the
ranker is the soft rank or a frozen learned sorter; target ranks exact by default. Adam, the
learning rate ``lr`` times ``decay`` every ``decay_every`` epochs. The bn and attention variants
really train BatchNorm (the original's "bn" script built the simple model), synchronised across
processes by the loop.

Evaluation. AsnaMetric (``eval_crop``: the central crop by default) on the validation and test
parts; SROCC, PLCC and RMSE against z. Files: the loop's (latest.pth, epoch_K.pth, metrics.csv,
curves.png), split.json (the three parts by image name and content) and best.pth (the epoch with
the best validation SROCC; the last epoch without a validation part). Every checkpoint loads in
score-pair and eval-db with ``--metric asna --checkpoint``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError, IQAError, WeightsError
from ..losses import DEFAULT_TEMPERATURE
from ..models.asna import STANDARDISATION, Standardisation
from .config import RunOptions
from .loop import Curves, Recipe, RunContext, Shard, TrainEvent, TrainResult

METHOD = "asna"
STANDARDISE_CHOICES = ("auto", "train", *STANDARDISATION)
TRAIN_CROPS = ("random", "center")
EVAL_CROPS = ("center", "grid")
SMALL_RULES = ("pad", "resize")
TARGET_RANK_ALIASES = {"exact": "exact", "ranker": "ranker", "sorter": "ranker"}
MIN_EVAL_ROWS = 3  # correlations need at least three scores
VAL_PURPOSE, SHUFFLE_PURPOSE = 5, 6  # seeded_rng purposes (perceptual.py uses 1-3, the loop's items 4)
SPLIT_FILE, BEST_FILE = "split.json", "best.pth"
# the original's constants, by database (other databases: the training part's own mean and std)
AUTO_STANDARDISATION = {"tid2013": "tid", "tid2008": "tid", "pipal": "pipal"}


@dataclass(frozen=True)
class AsnaTrainConfig(RunOptions):
    """Everything an ``iqa train --method asna`` run depends on (with RunOptions' name, seed, ...).

    database, format, db_options  the database folder and its reader (``read_database``)
    cache, use_cache  the HDF5 image cache to use or build (None: eval-db's default place for this
                      database, datasets.cache.default_cache_path); use_cache False: decode the files
    preset, variant, size  the network: a published preset (models/asna.PRESETS; default: the
                      variant's), its variant replaced by ``variant``, its input size by ``size``
    mse_weight, rank_weight  m and s of the loss; ranker "soft" | "sorter"; sorter: a sorter
                      checkpoint (None: the bundled one); target_ranks "exact" | "ranker"
    batch_size        pairs per optimiser step (the whole job's); exactly the sorter's length with it
    epochs, lr, decay, decay_every  Adam at lr x decay^floor((epoch - 1) / decay_every)
    train_fraction    contents (the database's protocol unit) given to training + validation
    val_fraction      of the training contents, held out to choose the best epoch (0: none)
    standardise       "auto" | "train" | "tid" | "pipal" | "pieapp" (see the module docstring)
    train_crop, eval_crop, small, augment  how pairs become network inputs (module docstring)
    eval_every        evaluate every this many epochs (and before the first, and after the last)
    """

    database: str
    format: str = "auto"
    db_options: Mapping[str, Any] = field(default_factory=dict)
    cache: str | None = None
    use_cache: bool = True
    preset: str | None = None
    variant: str | None = None
    size: int | None = None
    mse_weight: float = 0.1
    rank_weight: float = 0.1
    ranker: str = "soft"
    target_ranks: str = "exact"
    sorter: str | None = None
    rank_temperature: float = DEFAULT_TEMPERATURE
    batch_size: int = 16
    epochs: int = 30
    lr: float = 1e-4
    decay: float = 0.1
    decay_every: int = 10
    train_fraction: float = 0.8
    val_fraction: float = 0.1
    standardise: str = "auto"
    train_crop: str = "random"
    eval_crop: str = "center"
    small: str = "pad"
    augment: bool = True
    eval_every: int = 1
    eval_batch_size: int = 16

    def __post_init__(self):
        for key in ("database", "cache", "sorter", "checkpoints_dir"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, key, str(value))
        object.__setattr__(self, "db_options", dict(self.db_options))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "db_options": dict(self.db_options), "method": METHOD, "mode": METHOD}


# Options a resumed run must share with its checkpoint (others, e.g. epochs or device, may change).
RESUME_KEYS = ("mode", "preset", "variant", "size", "mse_weight", "rank_weight", "ranker", "target_ranks", "sorter",
               "rank_temperature", "batch_size", "lr", "decay", "decay_every", "train_fraction", "val_fraction",
               "standardise", "train_crop", "small", "augment", "seed", "format", "db_options")


def network_config(cfg: AsnaTrainConfig):
    """The AsnaConfig the run trains: the preset (default: the variant's, else simple) with the
    variant and input size overridden where given."""
    from ..models.asna import PRESETS, VARIANTS, asna_config

    preset = cfg.preset or cfg.variant or "simple"
    if preset not in PRESETS:
        raise InvalidInputError(f"--preset {preset}: choose one of {', '.join(PRESETS)}")
    if cfg.variant is not None and cfg.variant not in VARIANTS:
        raise InvalidInputError(f"--variant {cfg.variant}: choose one of {', '.join(VARIANTS)}")
    overrides: dict[str, Any] = {}
    if cfg.variant is not None:
        overrides["variant"] = cfg.variant
    if cfg.size is not None:
        overrides["input_size"] = cfg.size
    try:
        return asna_config(preset, **overrides)
    except ValueError as exc:
        raise InvalidInputError(f"--size {cfg.size}: {exc}") from None


def _check_number(value, option: str, low: float, high: float | None = None, low_inclusive: bool = True,
                  high_inclusive: bool = True) -> None:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if low_inclusive else value > low)
    ok = ok and (high is None or (value <= high if high_inclusive else value < high))
    if not ok:
        low_text = f"{'>=' if low_inclusive else '>'} {low:g}"
        high_text = "" if high is None else f" and {'<=' if high_inclusive else '<'} {high:g}"
        raise InvalidInputError(f"{option} must be a number {low_text}{high_text}, got {value}")


def _check_choice(value, option: str, choices) -> None:
    if value not in choices:
        raise InvalidInputError(f"{option} {value}: choose one of {', '.join(str(c) for c in choices)}")


def validate_asna_config(cfg: AsnaTrainConfig) -> AsnaTrainConfig:
    """Check the options (one-line errors) and resolve the seed and the target-rank spelling."""
    from ..losses.asna import RANKERS
    from .config import _check_int, check_run_name, resolve_seed

    check_run_name(cfg.name)
    network_config(cfg)
    _check_number(cfg.mse_weight, "--mse-weight", 0.0, 1.0)
    _check_number(cfg.rank_weight, "--rank-weight", 0.0)
    _check_number(cfg.rank_temperature, "--rank-temperature", 0.0, low_inclusive=False)
    _check_choice(cfg.ranker, "--ranker", RANKERS)
    _check_choice(cfg.target_ranks, "--target-ranks", tuple(TARGET_RANK_ALIASES))
    _check_int(cfg.batch_size, "--batch-size", 2)
    _check_int(cfg.epochs, "--nepoch", 1)
    _check_number(cfg.lr, "--lr", 0.0, low_inclusive=False)
    _check_number(cfg.decay, "--decay", 0.0, 1.0, low_inclusive=False)
    _check_int(cfg.decay_every, "--decay-every", 1)
    _check_number(cfg.train_fraction, "--split", 0.0, 1.0, False, False)
    _check_number(cfg.val_fraction, "--val-fraction", 0.0, 1.0, high_inclusive=False)
    _check_choice(cfg.standardise, "--standardise", STANDARDISE_CHOICES)
    _check_choice(cfg.train_crop, "--train-crop", TRAIN_CROPS)
    _check_choice(cfg.eval_crop, "--eval-crop", EVAL_CROPS)
    _check_choice(cfg.small, "--small", SMALL_RULES)
    _check_int(cfg.eval_every, "--testset_freq", 1)
    _check_int(cfg.eval_batch_size, "--eval-batch-size", 1)
    if cfg.num_workers is not None:
        _check_int(cfg.num_workers, "--workers", 0)
    if cfg.stop_after_epoch is not None:
        _check_int(cfg.stop_after_epoch, "stop_after_epoch", 0)
    if cfg.cache is not None and not cfg.use_cache:
        raise InvalidInputError(f"--cache {cfg.cache} and --no-cache contradict each other: give one")
    if cfg.sorter is not None and cfg.ranker != "sorter":
        raise InvalidInputError(f"--sorter {cfg.sorter} is the learned ranker of --ranker sorter; add --ranker sorter "
                                f"(or drop --sorter)")
    if cfg.ranker == "sorter":
        length = load_ranker(cfg).config.length
        if cfg.batch_size != length:
            raise InvalidInputError(f"--ranker sorter ranks batches of exactly {length} scores (the sorter's length), "
                                    f"but --batch-size is {cfg.batch_size}: use --batch-size {length}, or --ranker "
                                    f"soft for other batch sizes")
    return replace(cfg, seed=resolve_seed(cfg.seed), target_ranks=TARGET_RANK_ALIASES[cfg.target_ranks])


def load_ranker(cfg: AsnaTrainConfig):
    """The frozen learned sorter of ``--ranker sorter``: ``cfg.sorter`` or the bundled one."""
    from ..weights import load_sorter

    if cfg.sorter is not None and not Path(cfg.sorter).is_file():
        raise InvalidInputError(f"--sorter {cfg.sorter}: no such file (a sorter checkpoint from iqa train --method "
                                f"sorter, or leave --sorter out for the bundled one)")
    return load_sorter(cfg.sorter)


# ---------------------------------------------------------------------------------------------
# data: the table, the split, the targets, the pairs
# ---------------------------------------------------------------------------------------------

def read_training_table(root: str | Path, fmt: str = "auto", options: Mapping[str, Any] | None = None):
    """The database's table, checked for full-reference training: every row has a reference,
    some rows have scores (rows without one are left out)."""
    from ..datasets.formats import read_database

    table = read_database(root, fmt, **dict(options or {}))
    if len(table) == 0 or not table.has_references:
        missing = int(table.rows["ref"].isna().sum())
        found = ("no reference images" if missing == len(table)
                 else f"{missing} of {len(table)} rows without a reference")
        raise InvalidInputError(f"{root}: {table.database} has {found}, but ASNA is full-reference: train it on a "
                                f"database with references (TID2013, KADID-10k, PIPAL, PieAPP, LIVE, CSIQ, or a CSV "
                                f"with a ref column)")
    scored = np.isfinite(table.scores)
    if not scored.any():
        raise InvalidInputError(f"{root}: {table.database} has no human scores, so there is nothing to learn (for "
                                f"'iqa distort' output, add a dmos.csv with a score per image beside listing.csv)")
    return table if scored.all() else table.select(np.flatnonzero(scored))


@dataclass(frozen=True, eq=False)
class TrainingSplit:
    """Row positions of the training, validation and test parts (sorted), and how they were made."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    protocol: str  # "content", "image" or "official"

    def describe(self, table) -> dict[str, Any]:
        """What split.json holds: each part's image names and contents."""
        names, contents = table.rows["name"].to_numpy(), table.rows["content"].astype(str).to_numpy()
        doc: dict[str, Any] = {"database": table.database, "root": str(table.root), "protocol": self.protocol}
        for part in ("train", "val", "test"):
            rows = getattr(self, part)
            doc[part] = {"n": int(len(rows)), "contents": sorted(set(contents[rows].tolist())),
                         "images": names[rows].tolist()}
        return doc


def _groups(table, protocol: str) -> np.ndarray:
    return (table.rows["content"].astype(str).to_numpy() if protocol == "content"
            else table.rows["name"].astype(str).to_numpy())


def carve_validation(table, train: np.ndarray, seed: int, val_fraction: float, protocol: str
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): ``val_fraction`` of the training part's contents (images for the image
    protocol), at least one, drawn with a generator seeded by (seed, VAL_PURPOSE)."""
    train = np.asarray(train, dtype=np.int64)
    if val_fraction <= 0:
        return train, np.zeros(0, dtype=np.int64)
    groups = _groups(table, protocol)[train]
    names = np.unique(groups)
    unit = "contents" if protocol == "content" else "images"
    if len(names) < 2:
        raise InvalidInputError(f"{table.root}: the training part has {len(names)} {unit[:-1]}, too few to hold "
                                f"some out for validation; use --val-fraction 0 or a larger --split")
    n_val = min(len(names) - 1, max(1, int(math.floor(val_fraction * len(names) + 0.5))))
    held = set(np.random.default_rng([int(seed), VAL_PURPOSE]).permutation(names)[:n_val].tolist())
    in_val = np.array([g in held for g in groups], dtype=bool)
    return np.sort(train[~in_val]), np.sort(train[in_val])


def training_split(table, seed: int, train_fraction: float = 0.8, val_fraction: float = 0.1) -> TrainingSplit:
    """The database's protocol split (see the module docstring), with a validation part."""
    protocol = table.protocol
    if protocol == "official":
        official = table.splits(protocol="official")[0]
        if len(official.train) and len(official.test):
            if len(official.val):
                return TrainingSplit(official.train, official.val, official.test, "official")
            train, val = carve_validation(table, official.train, seed, val_fraction, "content")
            return TrainingSplit(train, val, official.test, "official")
        protocol = "content"  # an official split without training rows (PieAPP's per-image test scores)
    split = table.splits(seed=seed, repeats=1, train_fraction=train_fraction, protocol=protocol)[0]
    train, val = carve_validation(table, split.train, seed, val_fraction, protocol)
    return TrainingSplit(train, val, split.test, protocol)


def training_standardisation(table, train_rows: np.ndarray, choice: str = "auto") -> Standardisation:
    """How scores become targets (see the module docstring); std < 0 for lower-is-better scores."""
    sign = 1.0 if table.higher_better else -1.0
    flipped = " (sign flipped: lower is better)" if sign < 0 else ""
    if choice == "auto":
        choice = AUTO_STANDARDISATION.get(table.database, "train")
    if choice != "train":
        base = STANDARDISATION[choice]
        return Standardisation(base.mean, sign * base.std, base.description + flipped)
    scores = table.scores[np.asarray(train_rows, dtype=np.int64)]
    mean, std = float(np.mean(scores)), float(np.std(scores))
    if not std > 0:
        raise InvalidInputError(f"{table.root}: the training part's {len(scores)} scores are all {mean:g}: nothing to "
                                f"learn from (check the score file)")
    return Standardisation(mean, sign * std, f"{table.database} {table.score_name}: the training part's mean and "
                                             f"standard deviation{flipped}")


def training_pair(ref: np.ndarray, dist: np.ndarray, size: int, small: str, crop: str, augment: bool,
                  rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One training pair from uint8 (H, W, 3) images: float RGB [0, 1] (3, size, size) each, grown
    by the ``small`` rule, cropped at one place in both (``crop`` "random" draws it from ``rng``),
    then (``augment``) one augmentation drawn from ``rng`` applied to both."""
    from ..augment import draw_augmentation
    from ..models.asna import crop_origins, fit_to_size

    pair = torch.from_numpy(np.stack([ref, dist])).permute(0, 3, 1, 2).float().div_(255.0)
    pair = fit_to_size(pair, size, small)
    h, w = pair.shape[-2:]
    if crop == "random":
        y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    else:
        (y, x), = crop_origins(h, w, size, "center")
    pair = pair[..., y:y + size, x:x + size]
    if augment:
        pair = draw_augmentation(rng).apply(pair)  # one draw for both images: the pair stays aligned
    return pair[0], pair[1]


class RowView:
    """An image cache seen through some of its table's rows: row k here is ``rows[k]`` there (for
    scoring a part of the table with eval_db.score_table)."""

    def __init__(self, store, rows: np.ndarray):
        self.store, self.rows = store, np.asarray(rows, dtype=np.int64)

    def read_row(self, row: int, which: str = "dist") -> np.ndarray | None:
        return self.store.read_row(int(self.rows[row]), which)


# ---------------------------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------------------------

class AsnaRecipe(Recipe):
    """Items are table rows (pairs); outputs per pair: the predicted and the target z."""

    unit = "pairs"
    columns = ("train_mse", "train_pearson", "train_rank", "val_srocc", "val_plcc", "val_rmse", "test_srocc",
               "test_plcc", "test_rmse")
    eval_key = "test_srocc"
    curves = Curves(score=(("val_srocc", "validation SROCC"), ("test_srocc", "test SROCC"),
                           ("test_plcc", "test PLCC")), score_label="correlation")

    def __init__(self, cfg: AsnaTrainConfig):
        self.cfg = cfg
        self.net_config = network_config(cfg)
        self.store = None

    # -- data ------------------------------------------------------------------------------------
    def prepare(self, ctx: RunContext) -> None:
        from ..losses.asna import AsnaLoss

        cfg = self.cfg
        self.seed, self.device, self.num_workers = ctx.seed, ctx.device, ctx.num_workers
        self.config = dict(ctx.config)
        self.table = read_training_table(cfg.database, cfg.format, cfg.db_options)
        self.split = training_split(self.table, self.seed, cfg.train_fraction, cfg.val_fraction)
        self._check_split()
        self.standardisation = training_standardisation(self.table, self.split.train, cfg.standardise)
        self.targets = self.standardisation.standardise(self.table.scores).astype(np.float32)
        self.split_doc = self.split.describe(self.table)
        resumed = ctx.resumed or {}
        for key, now, what in (("split", self.split_doc, "train/validation/test split"),
                               ("standardisation", asdict(self.standardisation), "score standardisation")):
            if key in resumed and resumed[key] != now:
                raise WeightsError(f"--resume: {cfg.run_dir / 'latest.pth'} was trained with another {what} (the "
                                   f"database changed); use a new --name")
        if cfg.use_cache:
            from ..datasets.cache import default_cache_path

            self.store = open_training_cache(self.table, cfg.cache or default_cache_path(self.table))
            self._check_sizes()
        ranker = load_ranker(cfg) if cfg.ranker == "sorter" else "soft"
        self.loss_fn = AsnaLoss(cfg.mse_weight, cfg.rank_weight, ranker, cfg.target_ranks,
                                cfg.rank_temperature).to(self.device)
        self.n_train, self.n_test, self.n_val = len(self.split.train), len(self.split.test), len(self.split.val)

    def _check_split(self) -> None:
        split, cfg, root = self.split, self.cfg, self.table.root
        if len(split.train) < cfg.batch_size:
            raise InvalidInputError(f"{root}: the training part holds {len(split.train)} scored pairs, fewer than one "
                                    f"batch of --batch-size {cfg.batch_size} (use a smaller --batch-size or a larger "
                                    f"--split)")
        for part in ("test", "val"):
            n = len(getattr(split, part))
            if (part == "test" or n) and n < MIN_EVAL_ROWS:
                raise InvalidInputError(f"{root}: the {'validation' if part == 'val' else 'test'} part holds {n} "
                                        f"pairs; its correlations need at least {MIN_EVAL_ROWS} (change --split or "
                                        f"--val-fraction)")

    def _check_sizes(self) -> None:
        """Each pair's two images have one size (read from the cache's index, no pixels)."""
        store, rows = self.store, np.arange(len(self.table))
        dist, ref = store.image_index(rows, "dist"), store.image_index(rows, "ref")
        bad = np.flatnonzero((store.height[dist] != store.height[ref]) | (store.width[dist] != store.width[ref]))
        if len(bad):
            k = int(bad[0])
            name = self.table.rows["name"].iloc[k]
            raise InvalidInputError(f"{name} is {store.width[dist[k]]}x{store.height[dist[k]]} but its reference is "
                                    f"{store.width[ref[k]]}x{store.height[ref[k]]}: a pair's "
                                    f"images must have one size ({len(bad)} such pairs)")

    def _read(self, row: int, which: str) -> np.ndarray:
        if self.store is not None:
            return self.store.read_row(row, which)
        from ..datasets.cache import load_database_image

        return load_database_image(self.table.rows[which].iloc[row], 0)

    def batches(self, epoch: int) -> list[list[int]]:
        from .perceptual import seeded_rng

        order = seeded_rng(self.seed, SHUFFLE_PURPOSE, epoch).permutation(self.split.train)
        size = self.cfg.batch_size
        return [order[k:k + size].tolist() for k in range(0, len(order) - size + 1, size)]

    def load(self, shard: Shard) -> dict[str, torch.Tensor]:
        cfg, size = self.cfg, self.net_config.input_size
        refs, dists = [], []
        for row, seed in zip(shard.items, shard.seeds):
            ref, dist = training_pair(self._read(row, "ref"), self._read(row, "dist"), size, cfg.small,
                                      cfg.train_crop, cfg.augment, np.random.default_rng(int(seed)))
            refs.append(ref)
            dists.append(dist)
        empty = torch.zeros(0, 3, size, size)
        return {"ref": torch.stack(refs) if refs else empty, "dist": torch.stack(dists) if dists else empty,
                "target": torch.from_numpy(self.targets[np.asarray(shard.items, dtype=np.int64)])}

    # -- model and loss ----------------------------------------------------------------------------
    def build(self) -> dict[str, nn.Module]:
        from ..models.asna import AsnaNet
        from .keyed import keyed_dropout_

        return {"model": keyed_dropout_(AsnaNet(self.net_config))}

    def optimizer(self, modules: dict[str, nn.Module]) -> torch.optim.Optimizer:
        return torch.optim.Adam(modules["model"].parameters(), lr=self.cfg.lr)

    def learning_rate(self, epoch: int, step: int, steps: int) -> float:
        return step_decay(epoch, self.cfg.lr, self.cfg.decay, self.cfg.decay_every)

    def forward(self, modules, data: dict[str, torch.Tensor], shard: Shard) -> dict[str, torch.Tensor]:
        from ..models.asna import rgb_to_network
        from .keyed import item_randomness

        ref, dist = data["ref"].to(self.device), data["dist"].to(self.device)
        with item_randomness(shard.seeds, [1] * len(shard.items), self.device):
            pred = modules["model"](rgb_to_network(ref), rgb_to_network(dist))  # [reference, distorted]
        return {"pred": pred, "target": data["target"].to(self.device)}

    def loss(self, modules, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self.loss_fn(outputs["pred"], outputs["target"])
        if not bool(torch.isfinite(loss)):  # the same on every process: they all stop
            raise IQAError(f"the training loss became {float(loss)}: the network diverged; start a new run with a "
                           f"lower --lr than {self.cfg.lr:g} (the epoch files before this one are kept)")
        return loss

    def batch_stats(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        terms = self.loss_fn.terms(outputs["pred"], outputs["target"])
        n = outputs["pred"].shape[0]
        return {"train_mse": float(terms["mse"]) * n, "train_pearson": float(terms["pearson"]) * n,
                "train_rank": float(terms["rank"]) * n}

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, modules) -> dict[str, Any]:
        from ..eval_db import score_table
        from ..models.asna import AsnaMetric
        from ..stats.correlation import plcc, rmse, srocc

        metric = AsnaMetric(modules["model"], crop=self.cfg.eval_crop, small=self.cfg.small)
        out: dict[str, Any] = {}
        for part in ("val", "test"):
            rows = getattr(self.split, part)
            if not len(rows):
                continue
            store = RowView(self.store, rows) if self.store is not None else None
            scores = score_table(self.table.select(rows), [metric], store=store, batch_size=self.cfg.eval_batch_size,
                                 device=self.device, num_workers=self.num_workers, short_side=0)[metric.name]
            target = self.targets[rows]
            out.update({f"{part}_srocc": srocc(scores, target), f"{part}_plcc": plcc(scores, target),
                        f"{part}_rmse": rmse(scores, target)})
        return out

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint(self, modules) -> dict[str, Any]:
        from ..weights import family_checkpoint_payload

        return family_checkpoint_payload(
            METHOD, modules["model"], self.net_config.to_dict(), run_config=self.config,
            extra={"standardisation": asdict(self.standardisation),
                   "scoring": {"order": "ref-dist", "crop": self.cfg.eval_crop, "small": self.cfg.small}})

    def resume_state(self, modules) -> dict[str, Any]:
        return {"split": self.split_doc, "standardisation": asdict(self.standardisation)}

    def restore(self, modules, checkpoint: dict[str, Any]) -> None:
        restore_family_model(modules["model"], checkpoint, METHOD, self.cfg.run_dir / "latest.pth")


def restore_family_model(model: nn.Module, checkpoint: dict[str, Any], family: str, path: Path) -> None:
    """Load a family checkpoint's state dict strictly into ``model`` (for --resume)."""
    from ..weights import load_strict

    state = checkpoint.get("state_dict")
    if checkpoint.get("family") != family or not isinstance(state, dict):
        raise WeightsError(f"--resume: {path} is not an {family} training checkpoint (family "
                           f"{checkpoint.get('family')!r}); start a new run with another --name")
    load_strict(model, state, source=str(path))


def step_decay(epoch: int, lr: float, decay: float, every: int) -> float:
    """lr x decay^floor((epoch - 1) / every): the original's step schedule (1-based epochs)."""
    return float(lr) * float(decay) ** ((int(epoch) - 1) // int(every))


def open_training_cache(table, path: str | Path):
    """The image cache of ``table`` at ``path``, built by the main process when missing or stale."""
    from ..datasets.cache import build_image_cache, open_image_cache
    from ..engine import share_from_main

    share_from_main(lambda: build_image_cache(table, path, short_side=0))
    return open_image_cache(path, table, 0)


# ---------------------------------------------------------------------------------------------
# the run: the loop, plus split.json and best.pth
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AsnaTrainResult:
    """The loop's result and what the ASNA run adds: the best epoch (highest validation SROCC,
    the last one without a validation part), its checkpoint and metrics row, the split file."""

    run: TrainResult
    best_epoch: int
    best_checkpoint: Path
    best: dict
    split_file: Path
    n_val: int
    standardisation: dict

    @property
    def model(self):
        return self.run.model

    def to_dict(self) -> dict[str, Any]:
        return {**self.run.to_dict(), "best_epoch": self.best_epoch, "best_checkpoint": str(self.best_checkpoint),
                "best": dict(self.best), "split_file": str(self.split_file), "n_val": self.n_val,
                "standardisation": dict(self.standardisation)}


def best_epoch(history, key: str | None) -> int:
    """The trained epoch (>= 1) with the highest ``key`` (NaN lowest, earliest on ties); the last
    trained epoch when ``key`` is None."""
    rows = [r for r in history if int(r.get("epoch", 0)) >= 1]
    if key is None:
        return int(rows[-1]["epoch"])
    best, best_value = None, -math.inf
    for row in rows:
        value = row.get(key)
        if value is None:
            continue
        value = -math.inf if value != value else float(value)
        if best is None or value > best_value:
            best, best_value = int(row["epoch"]), value
    return best if best is not None else int(rows[-1]["epoch"])


class _RunFiles:
    """A progress callback (so it runs on the main process only, once the run folder exists) that
    writes split.json and keeps best.pth = the best epoch's checkpoint so far, then passes the
    event on."""

    def __init__(self, recipe: AsnaRecipe, run_dir: Path, progress):
        self.recipe, self.run_dir, self.progress = recipe, run_dir, progress
        self.started = False
        self.best_value: float | None = None

    def key(self) -> str | None:
        return "val_srocc" if self.recipe.n_val else None

    def __call__(self, event: TrainEvent) -> None:
        if not self.started:
            self.started = True
            self.write_split()
            self.best_value = self.saved_best()
        if event.kind == "epoch" and event.epoch >= 1:
            self.consider(event.epoch, event.row or {})
        if self.progress is not None:
            self.progress(event)

    def write_split(self) -> None:
        from ..io.files import atomic_path

        with atomic_path(self.run_dir / SPLIT_FILE) as tmp:
            tmp.write_text(json.dumps({**self.recipe.split_doc, "seed": self.recipe.seed,
                                       "standardisation": asdict(self.recipe.standardisation)}, indent=1))

    def saved_best(self) -> float | None:
        path = self.run_dir / BEST_FILE
        if not path.is_file():
            return None
        try:
            value = torch.load(path, map_location="cpu", weights_only=True).get("selected", {}).get("value")
        except Exception:  # noqa: BLE001 - an unreadable best.pth is replaced by the next epoch's
            return None
        return float(value) if isinstance(value, (int, float)) else None

    def consider(self, epoch: int, row: dict) -> None:
        from .loop import write_checkpoint

        key = self.key()
        if key is None:
            value = float(epoch)  # no validation part: the latest epoch is the one kept
        else:
            if row.get(key) is None:
                return
            value = -math.inf if row[key] != row[key] else float(row[key])
        if self.best_value is not None and value <= self.best_value:
            return
        payload = torch.load(self.run_dir / f"epoch_{epoch}.pth", map_location="cpu", weights_only=True)
        payload["selected"] = {"epoch": epoch, "key": key or "epoch", "value": value}
        write_checkpoint(self.run_dir / BEST_FILE, payload)
        self.best_value = value


def train_asna(config: AsnaTrainConfig, progress=None) -> AsnaTrainResult:
    """Run ``iqa train --method asna`` (see the module docstring). Under torchrun, call it on every process."""
    from .loop import LoopSettings, run

    cfg = validate_asna_config(config)
    recipe = AsnaRecipe(cfg)
    settings = LoopSettings(
        run_dir=cfg.run_dir, total_epochs=cfg.epochs, config=cfg.to_dict(), resume=cfg.resume,
        seed_from_checkpoint=config.seed is None, resume_keys=RESUME_KEYS, eval_every=cfg.eval_every,
        device=cfg.device, num_workers=cfg.num_workers, stop_after_epoch=cfg.stop_after_epoch,
        inputs=tuple(p for p in (cfg.database, cfg.sorter) if p is not None))
    result = run(recipe, settings, _RunFiles(recipe, cfg.run_dir, progress))
    key = "val_srocc" if recipe.n_val else None
    epoch = best_epoch(result.history, key)
    row = next(r for r in result.history if int(r.get("epoch", -1)) == epoch)
    return AsnaTrainResult(result, epoch, cfg.run_dir / BEST_FILE, dict(row), cfg.run_dir / SPLIT_FILE, recipe.n_val,
                           asdict(recipe.standardisation))
