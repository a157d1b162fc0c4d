"""GraphIQA training: pretraining on distortion type and level, and fine-tuning on MOS (two recipes
of the shared loop, ``iqa train --method graphiqa-pretrain | graphiqa``).

Both read any database through ``datasets.read_database`` (KADID-10k, the KADID-style folder of
``iqa distort``, TID, LIVE, KonIQ, a CSV of your own, ...) and stream images from its HDF5 image cache
(``datasets/cache.py``; the same file ``eval-db`` uses), cropping 224x224 crops without resizing.

Images smaller than a crop. The original takes crops without resizing (KonIQ was first resized to
512x384). The rule here, for both stages: with ``--short-side N`` every image's shorter side is
resized to N first (aspect kept; as ``eval-db --short-side``); without it, the database's own
protocol decides (SPAQ: 512), else images are used at full size, unless some image's shorter side is
below the crop size: then every image's shorter side is resized to the crop size. The size used is
recorded in ``split.json`` and in the checkpoints (``short_side``); score other images the same way.

Pretraining (``graphiqa-pretrain``; rows with a distortion type and a level >= 1, no human scores):
each optimiser step is one TripletSampler draw: an anchor graph of ``batch_size`` (32) crops of one
type (random contents and levels), a positive graph of the same type and a negative graph of
another type, each crop at a random position of its image. Loss: TripletMarginLoss(margin 0.1) on
the graph codes (positive and negative codes without gradients) + 0.25 x MSE between the anchor
crops' sampled level predictions (mean-edge summary) and their levels; Adam, lr 1e-5. An epoch is
``steps`` steps. The graph couples the crops of a batch, so under torchrun each process runs the
frozen backbone on its share of the step's crops only; the features are gathered (the loop's exact
batch-coupled loss) and every process forms the three graphs over the whole step, so 1 and N
processes give the same weights. ``(1 - split)`` of the contents are held out: every evaluation
scores ``eval_triplets`` fixed triplets drawn from them (triplet accuracy d(a,p) < d(a,n), the
loss with μ, and the SROCC of the predicted level μ against the level).

Fine-tuning (``graphiqa``; rows with a human score): the database's protocol splits train/test
(by content for synthetic databases, by image for authentic ones, or the official split; seeded),
and a validation part is carved from the training part the same way (an official validation set
when the database has one). Epochs shuffle the training images; a step takes ``batch_size`` (32)
images, each as ``crops`` (25) random crops forming its own graph (self-edge summary); loss: MSE
between every crop's sampled prediction and its image's score on the raw scale; Adam, lr 5e-6.
Validation and test are scored every ``testset_freq`` epochs by GraphIQAScorer (μ averaged over
the seeded crop layout: exactly what ``score-image`` / ``eval-db --metric graphiqa`` compute), and
the epoch with the best validation SROCC is saved as ``best.pth`` -- the test part never selects.

Both write ``split.json`` (which rows went where), ``latest.pth`` (resume), ``best.pth`` (fine-
tuning) and the loop's logs; checkpoints load in ``score-image`` / ``eval-db`` with ``--checkpoint``
and in fine-tuning with ``--init`` (one K: a different ``--embed-size`` is an error naming both).
Every random choice is a function of the seed and the item's place (training/loop.py), so resumed
runs and any number of processes reproduce the one-process run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError, WeightsError
from .loop import Curves, LoopSettings, Recipe, RunContext, Shard, TrainResult, run
from .perceptual import SHUFFLE_PURPOSE, learning_rate, seeded_rng

PRETRAIN, FINETUNE = "graphiqa-pretrain", "graphiqa"
METHODS = (PRETRAIN, FINETUNE)
STAGES = {PRETRAIN: "pretrain", FINETUNE: "finetune"}
# the released settings; split = fraction of the contents (or images) trained on
DEFAULTS = {PRETRAIN: {"lr": 1e-5, "nepoch": 10, "split": 0.9},
            FINETUNE: {"lr": 5e-6, "nepoch": 50, "split": 0.8}}
DEFAULT_STEPS = 500  # pretraining steps (triplets) per epoch; the original checkpoints every 5,000
CROP_PURPOSE, NOISE_PURPOSE = 5, 6  # per-item seed purposes (the loop's items use 4)
EVAL_STREAM = 1  # the TripletSampler stream of the held-out triplets (training draws stream 0)
SCORER_SEED = 0  # the crop layout seed of score-image's default
SPLIT_FILE = "split.json"


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GraphIQATrainConfig:
    """Everything a GraphIQA training run depends on (``iqa train --method graphiqa-pretrain | graphiqa``).

    database, db_format, db_options   what ``read_database`` reads (``--format``, ``--db-option``)
    init              fine-tuning: a GraphIQA checkpoint to start from (a pretraining run's latest.pth,
                      or an original Reg_Domain file); None: ImageNet backbone, fresh graph layers
    embed_size        K; None: the --init checkpoint's, else models.graphiqa.DEFAULT_EMBED_SIZE
    crop_size         crop side (224 as published; smaller only for quick checks)
    crops             fine-tuning: crops per image, in training and in the evaluation's scorer
    batch_size        pretraining: crops per graph (anchor, positive and negative each);
                      fine-tuning: images per step. Global under torchrun.
    steps             pretraining: steps (triplets) per epoch
    nepoch, nepoch_decay, lr   epochs at ``lr`` then epochs of linear decay (training/perceptual.py);
                      None: the method's DEFAULTS
    split             fraction trained on, by the database's protocol; None: the method's DEFAULTS
                      (a database with an official split uses it)
    val_fraction      fine-tuning: fraction of the training part held out for best-epoch selection
    eval_triplets     pretraining: held-out triplets scored at each evaluation
    testset_freq      evaluate every this many epochs (and before the first, and after the last)
    cache, short_side the image cache file (None: eval-db's default place) and the resize rule
                      (module docstring)
    eval_batch_size   images per scoring work item in evaluation
    """

    name: str
    method: str
    database: str
    db_format: str = "auto"
    db_options: dict = field(default_factory=dict)
    checkpoints_dir: str = "checkpoints"
    init: str | None = None
    embed_size: int | None = None
    crop_size: int = 224
    crops: int = 25
    batch_size: int = 32
    steps: int = DEFAULT_STEPS
    nepoch: int | None = None
    nepoch_decay: int = 0
    lr: float | None = None
    split: float | None = None
    val_fraction: float = 0.1
    eval_triplets: int = 20
    testset_freq: int = 1
    seed: int | None = None
    device: str = "auto"
    backbone_weights: str | None = None
    cache: str | None = None
    short_side: int | None = None
    eval_batch_size: int = 8
    num_workers: int | None = None
    resume: bool = False
    stop_after_epoch: int | None = None

    def __post_init__(self) -> None:
        for key in ("database", "init", "backbone_weights", "cache", "checkpoints_dir"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, key, str(value))
        object.__setattr__(self, "db_options", dict(self.db_options or {}))

    @property
    def mode(self) -> str:
        return self.method

    @property
    def stage(self) -> str:
        return STAGES[self.method]

    @property
    def total_epochs(self) -> int:
        return int(self.nepoch or 0) + int(self.nepoch_decay)

    @property
    def run_dir(self) -> Path:
        return Path(self.checkpoints_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["db_options"] = dict(self.db_options)
        d["mode"] = self.method
        return d


# Options a resumed run must share with its checkpoint (K is checked by the strict load itself).
RESUME_KEYS = ("mode", "database", "db_format", "db_options", "init", "crop_size", "crops", "batch_size", "steps",
               "lr", "seed", "split", "val_fraction", "eval_triplets", "short_side", "backbone_weights")


def _whole(value, option: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidInputError(f"{option} must be a whole number >= {minimum}, got {value}")
    return int(value)


def _fraction(value, option: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < float(value) < 1:
        raise InvalidInputError(f"{option} must be a number between 0 and 1 (exclusive), got {value}")
    return float(value)


def validate_graphiqa_config(cfg: GraphIQATrainConfig) -> GraphIQATrainConfig:
    """Check the options (one-line errors) and fill the method's defaults and a seed."""
    if not cfg.name or Path(cfg.name).name != cfg.name or cfg.name in (".", ".."):
        raise InvalidInputError(f"--name {cfg.name!r}: expected a plain folder name (no '/'), e.g. --name my_run")
    if cfg.method not in METHODS:
        raise InvalidInputError(f"--method {cfg.method}: GraphIQA training is one of {', '.join(METHODS)}")
    if not cfg.database:
        raise InvalidInputError(f"--method {cfg.method} trains on a database folder: give DB (e.g. a KADID-10k "
                                f"folder or the output of 'iqa distort')")
    if cfg.init is not None and cfg.method == PRETRAIN:
        raise InvalidInputError("--init is for fine-tuning (--method graphiqa); pretraining starts from the ImageNet "
                                "backbone and fresh graph layers")
    defaults = DEFAULTS[cfg.method]
    nepoch = defaults["nepoch"] if cfg.nepoch is None else _whole(cfg.nepoch, "--nepoch", 0)
    _whole(cfg.nepoch_decay, "--nepoch_decay", 0)
    if nepoch + cfg.nepoch_decay < 1:
        raise InvalidInputError("--nepoch + --nepoch_decay must be at least 1 epoch")
    lr = defaults["lr"] if cfg.lr is None else cfg.lr
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InvalidInputError(f"--lr must be a positive number, got {lr}")
    split = defaults["split"] if cfg.split is None else _fraction(cfg.split, "--split")
    _fraction(cfg.val_fraction, "--val-fraction")
    if cfg.embed_size is not None:
        _whole(cfg.embed_size, "--embed-size", 1)
    _whole(cfg.crop_size, "--crop-size", 32)
    _whole(cfg.crops, "--crops", 1)
    _whole(cfg.batch_size, "--batch-size", 1)
    _whole(cfg.steps, "--steps", 1)
    _whole(cfg.eval_triplets, "--eval-triplets", 1)
    _whole(cfg.testset_freq, "--testset_freq", 1)
    _whole(cfg.eval_batch_size, "--eval-batch-size", 1)
    if cfg.short_side is not None:
        _whole(cfg.short_side, "--short-side", 0)
    if cfg.num_workers is not None:
        _whole(cfg.num_workers, "--workers", 0)
    if cfg.stop_after_epoch is not None:
        _whole(cfg.stop_after_epoch, "stop_after_epoch", 0)
    seed = cfg.seed
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2 ** 31))
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 64:
        raise InvalidInputError(f"--seed must be an integer from 0 to 2**64 - 1, got {seed}")
    return replace(cfg, nepoch=int(nepoch), lr=float(lr), split=split, seed=int(seed))


# ---------------------------------------------------------------------------------------------
# data: the table, the image cache, the splits
# ---------------------------------------------------------------------------------------------

def read_training_table(cfg: GraphIQATrainConfig):
    from ..datasets.formats import read_database

    return read_database(cfg.database, cfg.db_format, **cfg.db_options)


def labelled_rows(table, method: str) -> np.ndarray:
    """Positions of the rows a method trains and evaluates on, or a one-line error when there are none:
    pretraining needs a distortion type and a level >= 1, fine-tuning a human score."""
    if method == PRETRAIN:
        rows = np.flatnonzero((table.rows["type"].to_numpy() != "") & (table.rows["level"].to_numpy() >= 1))
        if len(rows) == 0:
            what = "distortion levels" if table.has_types else "distortion types or levels"
            raise InvalidInputError(f"{table.root}: {table.database} has no {what} ({len(table)} rows), which GraphIQA "
                                    f"pretraining learns from (use KADID-10k, or make a KADID-style folder with 'iqa "
                                    f"distort IMAGES --out DIR')")
        return rows
    rows = np.flatnonzero(np.isfinite(table.scores))
    if len(rows) == 0:
        raise InvalidInputError(f"{table.root}: {table.database} has no human scores here ({len(table)} rows), so "
                                f"there is nothing to fine-tune on (use a database with MOS; a folder without scores "
                                f"serves --method graphiqa-pretrain)")
    return rows


@dataclass(frozen=True, eq=False)
class GraphIQASplit:
    """Row positions (in the database's table) of each part; ``val`` is empty for pretraining."""

    protocol: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def names(self, table) -> dict[str, list[str]]:
        names = table.rows["name"].to_numpy()
        return {part: names[getattr(self, part)].tolist() for part in ("train", "val", "test")}


def make_graphiqa_split(table, rows: np.ndarray, seed: int, train_fraction: float,
                        val_fraction: float | None) -> GraphIQASplit:
    """train/test by the table's protocol over ``rows`` (QualityTable.splits, seeded), and with
    ``val_fraction`` a validation part carved from the training part by the same protocol (an
    official validation set when the database has one; by content for synthetic databases, by
    image otherwise when the official split has none). No content is ever in two parts."""
    sub = table.select(rows)
    first = sub.splits(seed, 1, train_fraction)[0]
    train, test, val = rows[first.train], rows[first.test], rows[first.val]
    if val_fraction is not None and len(val) == 0:
        protocol = table.protocol if table.protocol != "official" else (
            "content" if table.kind == "synthetic" else "image")
        inner = table.select(train).splits(seed, 2, 1.0 - val_fraction, protocol=protocol)[1]  # another draw
        train, val = train[inner.train], train[inner.test]
    elif val_fraction is None:
        train = np.sort(np.concatenate([train, val]))
        val = np.zeros(0, dtype=np.int64)
    for part, positions in (("training", train), ("test", test)):
        if len(positions) == 0:
            raise InvalidInputError(f"{table.root}: the split leaves no {part} images ({len(rows)} usable rows); "
                                    f"add images or change --split")
    return GraphIQASplit(table.protocol, np.sort(train), np.sort(val), np.sort(test))


def open_training_cache(cfg: GraphIQATrainConfig, table) -> tuple[Any, int]:
    """(ImageStore, short side used) for the database: its image cache, built or refreshed on the
    main process, at the size the module docstring's rule gives (read from the cache: no image is
    decoded twice when the sizes are fine)."""
    from ..datasets.cache import default_cache_path, ensure_image_cache, resolve_short_side
    from ..engine import share_from_main
    from ..io.files import check_output_path

    crop = int(cfg.crop_size)
    side = resolve_short_side(table, cfg.short_side)
    if side and side < crop:
        raise InvalidInputError(f"--short-side {side} is smaller than the {crop}x{crop} GraphIQA crops (give "
                                f"--short-side {crop} or more)")
    path = Path(cfg.cache) if cfg.cache is not None else default_cache_path(table)
    check_output_path(path, "--cache", inputs=[table.root])

    def build() -> tuple[Any, int]:
        store, _ = ensure_image_cache(table, path, short_side=side)
        images = store.image_index(np.arange(store.n_rows), "dist")
        shorter = np.minimum(store.height[images], store.width[images])
        if side == 0 and len(shorter) and shorter.min() < crop:
            if cfg.short_side is not None:  # --short-side 0 asked for full size
                i = int(np.argmin(shorter))
                raise InvalidInputError(f"{table.rows['dist'].iloc[i]}: {store.width[images[i]]}x"
                                        f"{store.height[images[i]]} pixels, smaller than the {crop}x{crop} GraphIQA "
                                        f"crops, and --short-side 0 keeps full size (drop it: then every image's "
                                        f"shorter side is resized to {crop})")
            store, _ = ensure_image_cache(table, path, short_side=crop)
            return store, crop
        return store, side

    return share_from_main(build)


def _derived_seed(seed: int, purpose: int) -> int:
    return int(np.random.default_rng([int(seed), purpose]).integers(2 ** 63))


def _hwc_to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def item_crops(store, row: int, count: int, size: int, seed: int) -> torch.Tensor:
    """uint8 (count, 3, size, size): ``count`` crops of table row ``row``'s image at positions drawn
    from ``seed`` (RandomCrop's uniform rule, models.graphiqa.random_crop_offsets)."""
    from ..models.graphiqa import random_crop_offsets, take_crops

    image = _hwc_to_chw(store.read_row(int(row)))
    generator = torch.Generator().manual_seed(_derived_seed(seed, CROP_PURPOSE))
    offsets = random_crop_offsets(int(image.shape[1]), int(image.shape[2]), count, size, generator)
    return take_crops(image[None], offsets, size)[0]


def item_noise(seeds: Sequence[int], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """ε ~ N(0, 1) of ``shape`` per item (rows), each item's from its own seed: the fuzzy heads'
    training-time draw, the same whichever process holds the item."""
    rows = [torch.randn(shape, generator=torch.Generator().manual_seed(_derived_seed(s, NOISE_PURPOSE)))
            for s in seeds]
    return (torch.stack(rows) if rows else torch.zeros((0, *shape))).to(device)


# ---------------------------------------------------------------------------------------------
# what both recipes share
# ---------------------------------------------------------------------------------------------

class GraphIQARecipe(Recipe):
    """The model, optimiser, schedule, data and checkpoints of both stages; see the module docstring."""

    curves = Curves()

    def __init__(self, cfg: GraphIQATrainConfig):
        self.cfg = cfg
        self.stage = cfg.stage
        self.seed = int(cfg.seed or 0)
        self.device = torch.device("cpu")
        self._prepared_model: nn.Module | None = None

    # -- data and model ----------------------------------------------------------------------------
    def prepare(self, ctx: RunContext) -> None:
        cfg = self.cfg
        self.seed, self.device, self.num_workers = ctx.seed, ctx.device, ctx.num_workers
        self.config = dict(ctx.config)
        table = read_training_table(cfg)
        rows = labelled_rows(table, cfg.method)
        self.split = make_graphiqa_split(table, rows, self.seed, float(cfg.split),
                                         cfg.val_fraction if cfg.method == FINETUNE else None)
        self.split_names = self.split.names(table)
        saved = (ctx.resumed or {}).get("split")
        if isinstance(saved, dict) and any(sorted(self.split_names[p]) != sorted(saved.get(p, []))
                                           for p in ("train", "val", "test")):
            raise WeightsError(f"--resume: {cfg.run_dir / 'latest.pth'} was trained on another split (the database "
                               f"changed); use a new --name")
        self.table = table
        self.prepare_rows()
        # The model before the cache: a bad --init or a missing backbone fails before any image is read.
        self._prepared_model = self.make_model(ctx.resumed)
        self.store, self.short_side = open_training_cache(cfg, table)
        self.n_train, self.n_test = len(self.split.train), len(self.split.test)

    def prepare_rows(self) -> None:
        """Per-stage views of the table (after the split)."""

    def make_model(self, resumed: dict | None):
        from ..models.graphiqa import GraphIQAConfig
        from ..weights import load_graphiqa

        cfg = self.cfg
        summary = "mean" if self.stage == "pretrain" else "self"
        source = cfg.backbone_weights or "imagenet"
        torch.manual_seed(self.seed)  # the same fresh weights on every process and in every run of the seed
        if resumed is not None:  # every weight comes back from latest.pth (restore)
            k = int(resumed.get("embed_size") or 0) or None
            backbone = "random" if resumed.get("backbone_in_checkpoint") else source
            model = load_graphiqa(backbone_weights=backbone, embed_size=k, summary=summary)
        elif cfg.init is not None:
            model = load_graphiqa(cfg.init, backbone_weights=source, embed_size=cfg.embed_size, summary=summary)
        else:
            model = load_graphiqa(config=GraphIQAConfig(embed_size=cfg.embed_size or GraphIQAConfig().embed_size,
                                                        summary=summary, crop_size=cfg.crop_size),
                                  backbone_weights=source)
        model.config = replace(model.config, crop_size=int(cfg.crop_size), summary=summary)
        return model

    def build(self) -> dict[str, nn.Module]:
        model, self._prepared_model = self._prepared_model, None  # the recipe does not keep it
        model.stage_parameters(self.stage)  # before DDP wraps it: only this stage's modules train
        return {"model": model}

    def optimizer(self, modules: dict[str, nn.Module]) -> torch.optim.Optimizer:
        params = [p for p in modules["model"].parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=float(self.cfg.lr))

    def learning_rate(self, epoch: int, step: int, steps: int) -> float:
        return learning_rate(epoch, float(self.cfg.lr), int(self.cfg.nepoch), int(self.cfg.nepoch_decay))

    # -- files -------------------------------------------------------------------------------------
    def files(self) -> dict[str, str]:
        cfg = self.cfg
        doc = {"method": cfg.method, "database": str(self.table.root), "format": self.table.database,
               "protocol": self.split.protocol, "seed": self.seed, "split": cfg.split,
               "val_fraction": cfg.val_fraction if cfg.method == FINETUNE else None, "short_side": self.short_side,
               "counts": {part: len(names) for part, names in self.split_names.items()}, **self.split_names}
        return {SPLIT_FILE: json.dumps(doc, indent=1) + "\n"}

    def checkpoint(self, modules: dict[str, nn.Module]) -> dict[str, Any]:
        from ..weights import graphiqa_checkpoint_payload

        return graphiqa_checkpoint_payload(modules["model"], extra={
            "method": self.cfg.method, "run_config": self.config, "short_side": self.short_side})

    def resume_state(self, modules: dict[str, nn.Module]) -> dict[str, Any]:
        model = modules["model"]
        return {"split": self.split_names, "embed_size": model.embed_size,
                "backbone_in_checkpoint": model.backbone_source != "imagenet"}

    def restore(self, modules: dict[str, nn.Module], checkpoint: dict[str, Any]) -> None:
        from ..weights import load_strict

        path = self.cfg.run_dir / "latest.pth"
        state = checkpoint.get("state_dict")
        if checkpoint.get("family") != "graphiqa" or not isinstance(state, dict):
            raise WeightsError(f"--resume: {path} is not a GraphIQA training checkpoint (no GraphIQA state_dict); "
                               f"start a new run with another --name")
        model = modules["model"]
        if any(k.startswith("backbone.") for k in state):
            load_strict(model, state, source=str(path))
            model.backbone_source = "checkpoint"
        else:
            load_strict(model.graph_modules(), state, source=str(path))

    def __getstate__(self) -> dict:  # DataLoader workers get the data, never a model
        state = self.__dict__.copy()
        state["_prepared_model"] = None
        state.pop("_eval_features", None)
        return state


def _correlations(pred: np.ndarray, target: np.ndarray, prefix: str) -> dict[str, float]:
    from ..stats.correlation import plcc, rmse, srocc

    keep = np.isfinite(pred) & np.isfinite(target)
    p, t = pred[keep], target[keep]
    enough = len(p) >= 3
    return {f"{prefix}_srocc": srocc(p, t) if enough else math.nan,
            f"{prefix}_plcc": plcc(p, t) if enough else math.nan,
            f"{prefix}_rmse": rmse(p, t) if len(p) else math.nan}


# ---------------------------------------------------------------------------------------------
# pretraining
# ---------------------------------------------------------------------------------------------

class GraphIQAPretrainRecipe(GraphIQARecipe):
    """Items are table rows, one crop each: a step's global batch is the anchor crops, then the
    positive, then the negative ones (``batch_size`` each). ``forward`` runs the frozen backbone on
    this process's crops; ``loss`` forms the three graphs over the gathered features."""

    unit = "crops"
    columns = ("train_triplet", "train_level_mse", "test_loss", "test_triplet_acc", "test_level_srocc")
    eval_key = "test_triplet_acc"
    curves = Curves(loss=(("train_loss", "train"), ("test_loss", "held-out")),
                    score=(("test_triplet_acc", "held-out triplet accuracy"),
                           ("test_level_srocc", "held-out level SROCC")), score_label="")

    def prepare_rows(self) -> None:
        from ..losses.graphiqa import TripletSampler

        types = self.table.rows["type"].to_numpy()
        self.levels = self.table.rows["level"].to_numpy(dtype=np.float32)
        train, test = self.split.train, self.split.test
        batch = int(self.cfg.batch_size)
        self.sampler = TripletSampler(types[train].tolist(), batch, seed=self.seed, stream=0)
        self.train_rows, self.test_rows = train, test
        held_out = TripletSampler(types[test].tolist(), batch, seed=self.seed, stream=EVAL_STREAM)
        self.eval_draws = [held_out.draw(i) for i in range(int(self.cfg.eval_triplets))]
        self._eval_features: dict[int, torch.Tensor] = {}
        self._last: dict[str, float] = {}

    def batches(self, epoch: int) -> list[list[int]]:
        steps = int(self.cfg.steps)
        out = []
        for step in range(steps):
            draw = self.sampler.draw((epoch - 1) * steps + step)
            rows = self.train_rows[np.concatenate([draw.anchor, draw.positive, draw.negative])]
            out.append([int(r) for r in rows])
        return out

    def load(self, shard: Shard) -> dict[str, torch.Tensor]:
        size = int(self.cfg.crop_size)
        crops = [item_crops(self.store, row, 1, size, seed)[0] for row, seed in zip(shard.items, shard.seeds)]
        return {"crops": torch.stack(crops) if crops else torch.zeros((0, 3, size, size), dtype=torch.uint8),
                "level": torch.from_numpy(self.levels[np.asarray(shard.items, dtype=np.int64)])}

    def forward(self, modules, data: dict[str, torch.Tensor], shard: Shard) -> dict[str, torch.Tensor]:
        from ..models.graphiqa import FEATURE_SIZE

        crops = data["crops"].to(self.device)
        if len(crops):
            features = modules["model"].features(crops)[0]
        else:  # a process with no crops in this step still takes part in the gather
            features = torch.zeros((0, FEATURE_SIZE), device=self.device)
        return {"features": features, "eps": item_noise(shard.seeds, (), self.device),
                "level": data["level"].to(self.device)}

    def loss(self, modules, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        from ..losses.graphiqa import pretrain_loss

        b = int(self.cfg.batch_size)
        model, features = modules["model"], outputs["features"]
        out = model.forward_features(features[None, :b], parts=("code", "level"), summary="mean")
        with torch.no_grad():
            positive = model.forward_features(features[None, b:2 * b], parts=("code",)).code
            negative = model.forward_features(features[None, 2 * b:], parts=("code",)).code
        level_pred = out.level.mu[0] + outputs["eps"][:b] * out.level.spread[0]
        parts = pretrain_loss(out.code, positive, negative, level_pred, outputs["level"][:b])
        self._last = {"train_triplet": float(parts.triplet.detach()), "train_level_mse": float(parts.level.detach())}
        return parts.total

    def batch_stats(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        n = len(outputs["features"])  # per-item sums, so the epoch's value is the mean over steps
        return {key: value * n for key, value in self._last.items()}

    # -- held-out evaluation -----------------------------------------------------------------------
    def _eval_crops(self, draw) -> tuple[torch.Tensor, np.ndarray]:
        """The 3 x batch crops of one held-out triplet, at positions drawn from its crop seed."""
        from ..models.graphiqa import random_crop_offsets, take_crops

        size = int(self.cfg.crop_size)
        generator = torch.Generator().manual_seed(int(draw.crop_seed))
        rows = self.test_rows[np.concatenate([draw.anchor, draw.positive, draw.negative])]
        crops = []
        for row in rows:
            image = _hwc_to_chw(self.store.read_row(int(row)))
            offsets = random_crop_offsets(int(image.shape[1]), int(image.shape[2]), 1, size, generator)
            crops.append(take_crops(image[None], offsets, size)[0, 0])
        return torch.stack(crops), self.levels[rows]

    def evaluate(self, modules) -> dict[str, Any]:
        """Held-out triplets (shared out among processes; their backbone features, which never
        change, computed once per run): accuracy, loss with μ, level SROCC."""
        import torch.nn.functional as F

        from ..engine import shard_work
        from ..losses.graphiqa import LEVEL_WEIGHT, TRIPLET_MARGIN
        from ..stats.correlation import srocc

        model, b = modules["model"], int(self.cfg.batch_size)
        work = shard_work(len(self.eval_draws))
        mine = []
        for i in work.mine:
            if i not in self._eval_features:
                crops, _ = self._eval_crops(self.eval_draws[i])
                self._eval_features[i] = model.features(crops.to(self.device))[0]
            features = self._eval_features[i]
            levels = self.levels[self.test_rows[self.eval_draws[i].anchor]]
            anchor = model.forward_features(features[None, :b], parts=("code", "level"), summary="mean")
            positive = model.forward_features(features[None, b:2 * b], parts=("code",)).code
            negative = model.forward_features(features[None, 2 * b:], parts=("code",)).code
            d_ap = float(F.pairwise_distance(anchor.code, positive, p=2))
            d_an = float(F.pairwise_distance(anchor.code, negative, p=2))
            mine.append((d_ap, d_an, anchor.level.mu[0].double().cpu().numpy(), levels))
        results = work.gather(mine)
        d_ap = np.array([r[0] for r in results])
        d_an = np.array([r[1] for r in results])
        mu = np.concatenate([r[2] for r in results])
        target = np.concatenate([r[3] for r in results]).astype(np.float64)
        triplet = np.maximum(d_ap - d_an + TRIPLET_MARGIN, 0.0).mean()
        return {"test_triplet_acc": float(np.mean(d_ap < d_an)),
                "test_loss": float(triplet + LEVEL_WEIGHT * np.mean((mu - target) ** 2)),
                "test_level_srocc": srocc(mu, target) if len(mu) >= 3 else math.nan}


# ---------------------------------------------------------------------------------------------
# fine-tuning
# ---------------------------------------------------------------------------------------------

class GraphIQAFinetuneRecipe(GraphIQARecipe):
    """Items are table rows (images); each image's ``crops`` crops are its own graph, so a process
    runs whole graphs and the loop only gathers predictions."""

    unit = "images"
    columns = ("val_srocc", "val_plcc", "val_rmse", "test_srocc", "test_plcc", "test_rmse")
    eval_key = "test_srocc"
    select_key = "val_srocc"
    curves = Curves(score=(("val_srocc", "validation SROCC"), ("test_srocc", "test SROCC"),
                           ("val_plcc", "validation PLCC"), ("test_plcc", "test PLCC")), score_label="correlation")

    def prepare_rows(self) -> None:
        self.scores = self.table.scores.astype(np.float32)
        self.n_val = len(self.split.val)

    def batches(self, epoch: int) -> list[list[int]]:
        order = seeded_rng(self.seed, SHUFFLE_PURPOSE, epoch).permutation(self.split.train)
        b = int(self.cfg.batch_size)
        return [[int(r) for r in order[k:k + b]] for k in range(0, len(order), b)]

    def load(self, shard: Shard) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        size, n = int(cfg.crop_size), int(cfg.crops)
        crops = [item_crops(self.store, row, n, size, seed) for row, seed in zip(shard.items, shard.seeds)]
        return {"crops": torch.stack(crops) if crops else torch.zeros((0, n, 3, size, size), dtype=torch.uint8),
                "mos": torch.from_numpy(self.scores[np.asarray(shard.items, dtype=np.int64)])}

    def forward(self, modules, data: dict[str, torch.Tensor], shard: Shard) -> dict[str, torch.Tensor]:
        crops, n = data["crops"].to(self.device), int(self.cfg.crops)
        if len(crops):
            out = modules["model"](crops, parts=("mos",), summary="self").mos
            pred = out.mu + item_noise(shard.seeds, (n,), self.device) * out.spread
        else:
            pred = torch.zeros((0, n), device=self.device)
        return {"pred": pred, "mos": data["mos"].to(self.device)}

    def loss(self, modules, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        from ..losses.graphiqa import finetune_loss

        return finetune_loss(outputs["pred"], outputs["mos"])

    def scorer(self, model):
        """What score-image builds from a checkpoint: μ averaged over the seeded crop layout."""
        from ..models.graphiqa import GraphIQAScorer

        return GraphIQAScorer(model, crops=int(self.cfg.crops), seed=SCORER_SEED)

    def evaluate(self, modules) -> dict[str, Any]:
        from ..eval_db import score_table

        scorer = self.scorer(modules["model"])
        row: dict[str, Any] = {}
        for part in ("val", "test"):
            rows = getattr(self.split, part)
            if len(rows) == 0:
                row.update({f"{part}_srocc": math.nan, f"{part}_plcc": math.nan, f"{part}_rmse": math.nan})
                continue
            scores = score_table(self.table.select(rows), [scorer], store=self.store.select(rows),
                                 batch_size=int(self.cfg.eval_batch_size), device=self.device,
                                 num_workers=self.num_workers)[scorer.name]
            row.update(_correlations(scores, self.table.scores[rows], part))
        return row


RECIPES = {PRETRAIN: GraphIQAPretrainRecipe, FINETUNE: GraphIQAFinetuneRecipe}


def train_graphiqa(config: GraphIQATrainConfig, progress=None) -> TrainResult:
    """Run a GraphIQA training (see the module docstring). Under torchrun, call it on every process."""
    cfg = validate_graphiqa_config(config)
    settings = LoopSettings(
        run_dir=cfg.run_dir, total_epochs=cfg.total_epochs, config=cfg.to_dict(), resume=cfg.resume,
        seed_from_checkpoint=config.seed is None, resume_keys=RESUME_KEYS, eval_every=cfg.testset_freq,
        device=cfg.device, num_workers=cfg.num_workers, stop_after_epoch=cfg.stop_after_epoch,
        inputs=tuple(p for p in (cfg.database, cfg.init) if p is not None), epoch_files=False)
    return run(RECIPES[cfg.method](cfg), settings, progress)
