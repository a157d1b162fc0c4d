"""GRepQ's low-level encoder, trained with the quality-aware contrastive loss (``iqa train --method
grepq-low``); ../shared/reference/grepq.md has the recipe, docs/grepq.md the user's side.

Data: any database whose reader knows each image's reference and content -- typically the output
of ``iqa distort`` (KADID-10k layout, ``listing.csv`` with type and level), read through
``datasets.read_database``. A training *item* is one content: its reference and ``versions - 1``
of its distorted versions, drawn once per run from the seed (the original hard-codes 9 = the
reference + 4 types x 2 levels per folder). The QACL loss couples the versions of one content only
(no cross-content negatives), so the loop's items are contents and a batch is ``batch_size``
contents (8 by default); under torchrun a batch's contents are shared among the processes.

Per step and content: two fragment views (datasets/grepq.py: a grid of pieces cut at the same
positions from every version; the second view with new offsets and one shared flip), drawn from
the item's own seed so a step does not depend on the number of processes. Both views of every
version go through the encoder in one batch (BatchNorm sees the whole global batch, synchronised
under torchrun), and the loss is QACL (losses/grepq.py) with the content's FSIM matrix.

The FSIM matrices (full-resolution versions, piq's FSIMc) are computed once, before the first
epoch, into an HDF5 array cache (io/store.py ``ArrayCache``, purpose "grepq-fsim"), keyed by each
version file's name, size and modification time plus the FSIM implementation; later runs and
epochs reuse them (the original recomputed all 36 pairs per content every epoch). The images
themselves are read from an HDF5 image cache of just the chosen versions (datasets/cache.py),
unless ``no_cache``.

Optimiser and schedule as the authors: AdamW (lr 1e-4, weight decay 0.05), cosine to 1e-6 stepped
every iteration, 15 epochs. With ``split`` a fraction of the contents is held out and the QACL of
fixed views of them is logged as ``val_loss`` (encoder in eval mode).

Checkpoints (``latest.pth``, ``epoch_K.pth``) hold ``state_dict`` (LowLevelEncoder keys) and load
with ``models.grepq.load_low_level_encoder`` -- the grepq metric's ``--low-level-weights``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError, WeightsError
from ..losses.grepq import QACL_TEMPERATURE, LowLevelRecipeDefaults, qacl_loss
from .grepq_common import (RunConfig, Stages, check_positive_float, check_positive_int, check_run_name, cosine_lr, no_stages,
                           resolve_seed)
from .loop import Curves, LoopSettings, Recipe, RunContext, Shard, TrainResult, run
from .perceptual import seeded_rng

METHOD = "grepq-low"
CHECKPOINT_FORMAT = "iqa-grepq-low"
FSIM_PURPOSE = "grepq-fsim"
FSIM_IMPLEMENTATION = "piq.fsim chromatic=True data_range=1"  # in every key: another FSIM gives other matrices
# seed purposes (the loop's per-item seeds use 4; the LPIPS recipes 1-3)
VERSIONS_PURPOSE, SPLIT_PURPOSE, SHUFFLE_PURPOSE, VAL_VIEW_PURPOSE, BN_PURPOSE = 11, 12, 13, 14, 15
BN_BATCHES = 32  # at most this many batches of training contents re-estimate BatchNorm after each epoch
_DEFAULTS = LowLevelRecipeDefaults()


@dataclass(frozen=True)
class GRepQLowConfig(RunConfig):
    """Everything a grepq-low run depends on.

    root, format, db_options   the database (``read_database(root, format, **db_options)``); it must
                               know each image's reference (``iqa distort`` output does)
    versions                   images per content: the reference + ``versions - 1`` distorted ones
    batch_size                 contents per optimiser step, for the whole job
    epochs, lr, weight_decay, min_lr   AdamW with a cosine schedule from lr to min_lr per iteration
    fragment_grid, fragment_piece      fragment views of grid x grid pieces of piece pixels (7 x 32)
    split                      fraction of contents to train on; the rest give ``val_loss`` (None: all)
    cache, no_cache            image cache of the chosen versions (None: under ``cache_dir()``)
    fsim_cache                 FSIM array cache (None: under ``cache_dir()``)
    seed                       None: random, recorded in the checkpoint (and reused by resume)
    stop_after_epoch           stop once this epoch has completed (a test hook)
    """

    method = METHOD
    path_fields = ("root", "checkpoints_dir", "cache", "fsim_cache")

    name: str
    root: str
    format: str = "auto"
    db_options: dict = field(default_factory=dict)
    checkpoints_dir: str = "checkpoints"
    versions: int = _DEFAULTS.versions
    batch_size: int = _DEFAULTS.contents_per_batch
    epochs: int = _DEFAULTS.epochs
    lr: float = _DEFAULTS.lr
    weight_decay: float = _DEFAULTS.weight_decay
    min_lr: float = _DEFAULTS.min_lr
    temperature: float = QACL_TEMPERATURE
    fragment_grid: int = _DEFAULTS.fragment_grid
    fragment_piece: int = _DEFAULTS.fragment_piece
    split: float | None = None
    seed: int | None = None
    device: str = "auto"
    num_workers: int | None = None
    cache: str | None = None
    no_cache: bool = False
    fsim_cache: str | None = None
    resume: bool = False
    stop_after_epoch: int | None = None



RESUME_KEYS = ("mode", "versions", "batch_size", "lr", "weight_decay", "min_lr", "temperature", "fragment_grid",
               "fragment_piece", "split", "seed")


def validate_low_config(cfg: GRepQLowConfig) -> GRepQLowConfig:
    """Check the options (one-line errors) and resolve the seed."""
    check_run_name(cfg.name)
    if cfg.no_cache and cfg.cache is not None:
        raise InvalidInputError("--cache and --no-cache contradict each other: give one")
    check_positive_int(cfg.versions, "--versions", 2)
    check_positive_int(cfg.batch_size, "--batch-size", 1)
    check_positive_int(cfg.epochs, "--nepoch", 1)
    check_positive_int(cfg.fragment_grid, "--fragment-grid", 1)
    check_positive_int(cfg.fragment_piece, "--fragment-piece", 1)
    check_positive_float(cfg.lr, "--lr")
    check_positive_float(cfg.weight_decay, "--weight-decay", allow_zero=True)
    check_positive_float(cfg.min_lr, "min_lr", allow_zero=True)
    check_positive_float(cfg.temperature, "temperature")
    if cfg.min_lr > cfg.lr:
        raise InvalidInputError(f"the cosine schedule ends at {cfg.min_lr:g}, above --lr {cfg.lr:g}: lower it")
    if cfg.split is not None and not 0 < cfg.split < 1:
        raise InvalidInputError(f"--split is the fraction of contents to train on, expected a number in (0, 1), "
                                f"got {cfg.split}")
    if cfg.num_workers is not None:
        check_positive_int(cfg.num_workers, "--workers", 0)
    if cfg.stop_after_epoch is not None:
        check_positive_int(cfg.stop_after_epoch, "stop_after_epoch", 0)
    return replace(cfg, seed=resolve_seed(cfg.seed))


# ---------------------------------------------------------------------------------------------
# contents and their versions
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Content:
    """One training item: a content id and the table rows of its chosen distorted versions (the
    reference is theirs, read through the first of them)."""

    name: str
    rows: tuple[int, ...]


def plan_contents(table, versions: int, seed: int) -> list[Content]:
    """Each content (sorted by id) with ``versions - 1`` of its distorted rows, drawn without
    replacement from (seed, content position); rows kept in table order."""
    if not table.has_references:
        raise InvalidInputError(f"{table.root}: {table.database} has no reference images here, but grepq-low trains "
                                f"on references and their distorted versions (make such a folder with iqa distort)")
    refs = table.rows["ref"].tolist()
    by_content: dict[str, list[int]] = {}
    for row, content in enumerate(table.rows["content"].astype(str).tolist()):
        by_content.setdefault(content, []).append(row)
    need = versions - 1
    short = [(name, len(rows)) for name, rows in sorted(by_content.items()) if len(rows) < need]
    if short:
        example = ", ".join(f"{name}: {n}" for name, n in short[:3])
        raise InvalidInputError(f"{table.root}: {len(short)} content(s) have fewer than {need} distorted versions "
                                f"({example}); --versions {versions} takes the reference and {need} distorted images "
                                f"of each content: lower --versions, or distort more types/levels")
    out = []
    for k, name in enumerate(sorted(by_content)):
        rows = by_content[name]
        if len({refs[r] for r in rows}) != 1:
            raise InvalidInputError(f"{table.root}: content {name} has images with different references "
                                    f"({', '.join(sorted({Path(str(refs[r])).name for r in rows})[:3])}); each "
                                    f"content must have one reference")
        pick = np.sort(seeded_rng(seed, VERSIONS_PURPOSE, k).choice(len(rows), size=need, replace=False))
        out.append(Content(name, tuple(int(rows[j]) for j in pick)))
    return out


def split_contents(n: int, fraction: float | None, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) content positions: all train without ``fraction``, else a seeded split."""
    if fraction is None:
        return list(range(n)), []
    order = seeded_rng(seed, SPLIT_PURPOSE).permutation(n)
    n_train = int(round(fraction * n))
    if n_train < 1 or n_train >= n:
        raise InvalidInputError(f"--split {fraction:g} of {n} content(s) leaves {n_train} to train on and "
                                f"{n - n_train} held out; each side needs at least one content")
    return sorted(int(i) for i in order[:n_train]), sorted(int(i) for i in order[n_train:])


def fsim_key(paths: Sequence[str]) -> str:
    """The FSIM cache key of one content's versions (in order): each file's name, size and
    modification time (stat only, so a cache hit reads no pixels) and the FSIM implementation."""
    files = []
    for path in paths:
        st = os.stat(path)
        files.append([Path(path).name, st.st_size, st.st_mtime_ns])
    doc = {"fsim": FSIM_IMPLEMENTATION, "files": files}
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------------------------

class LowLevelRecipe(Recipe):
    """Items are content positions; outputs per content: anchor and augmented features (V, 128)
    and its FSIM matrix (V, V)."""

    unit = "contents"

    def __init__(self, cfg: GRepQLowConfig, stages: Stages = no_stages):
        self.cfg = cfg
        self.stages = stages
        self.seed = int(cfg.seed or 0)
        self.device = torch.device("cpu")
        held_out = cfg.split is not None
        self.columns = ("val_loss",) if held_out else ()
        self.eval_key = "val_loss" if held_out else ""
        self.curves = Curves(loss=(("train_loss", "train"), ("val_loss", "held-out")) if held_out else
                             (("train_loss", "train"),))

    # -- data --------------------------------------------------------------------------------------
    def prepare(self, ctx: RunContext) -> None:
        from ..datasets.formats import read_database

        cfg = self.cfg
        self.seed, self.device, self.config = ctx.seed, ctx.device, dict(ctx.config)
        table = read_database(cfg.root, cfg.format, **dict(cfg.db_options))
        self.contents = plan_contents(table, cfg.versions, self.seed)
        self.train_ids, self.val_ids = split_contents(len(self.contents), cfg.split, self.seed)
        self.n_train, self.n_test = len(self.train_ids), len(self.val_ids)
        # the images of the chosen versions only (a KADID-10k reference has 125 distorted images)
        rows = sorted(r for c in self.contents for r in c.rows)
        self.table = table.select(rows)
        position = {row: k for k, row in enumerate(rows)}
        self.contents = [Content(c.name, tuple(position[r] for r in c.rows)) for c in self.contents]
        self.store = self._image_cache()
        self._check_sizes()
        self.similarity = self._fsim_matrices()

    def _image_cache(self):
        from ..datasets.cache import default_cache_path, ensure_image_cache, open_image_cache
        from ..engine import share_from_main
        from ..io.files import check_output_path

        cfg = self.cfg
        if cfg.no_cache:
            return None
        path = Path(cfg.cache) if cfg.cache is not None else default_cache_path(self.table, ".grepq-low")

        def build() -> str:
            check_output_path(path, "--cache", inputs=[self.table.root])
            with self.stages("caching images", len(self.table.image_paths()), "images") as advance:
                store, _ = ensure_image_cache(self.table, path, progress=advance)
            store.close()
            return str(path)

        return open_image_cache(share_from_main(build), self.table)

    def _paths(self, content: Content) -> list[str]:
        rows = self.table.rows
        return [str(rows["ref"].iloc[content.rows[0]]), *(str(rows["dist"].iloc[r]) for r in content.rows)]

    def _check_sizes(self) -> None:
        """Every version of a content has its reference's size (checked before any pixel is read)."""
        from ..io.images import image_size

        for content in self.contents:
            if self.store is not None:
                images = [self.store.image_index(content.rows[:1], "ref")[0],
                          *self.store.image_index(list(content.rows), "dist")]
                sizes = [self.store.size(int(i)) for i in images]
            else:
                sizes = [image_size(p) for p in self._paths(content)]
            for path, size in zip(self._paths(content)[1:], sizes[1:]):
                if size != sizes[0]:
                    raise InvalidInputError(f"{path} is {size[1]}x{size[0]} but its reference "
                                            f"{Path(self._paths(content)[0]).name} is {sizes[0][1]}x{sizes[0][0]}: "
                                            "the versions of a content must have the same size")

    def read_versions(self, content: Content) -> torch.Tensor:
        """uint8 (V, 3, H, W): the reference, then the chosen distorted versions."""
        from ..datasets.cache import load_database_image, resolve_short_side

        if self.store is not None:
            images = [self.store.read_row(content.rows[0], "ref"),
                      *(self.store.read_row(r, "dist") for r in content.rows)]
        else:
            side = resolve_short_side(self.table, None)
            images = [load_database_image(p, side) for p in self._paths(content)]
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)

    def _fsim_matrices(self) -> dict[int, np.ndarray]:
        """Every content's FSIM matrix: read from the cache, the missing ones computed (shared
        among the processes under torchrun) and written back by the main process."""
        from ..datasets.cache import default_cache_path
        from ..datasets.grepq import cached_fsim_matrix
        from ..engine import is_main_process, share_from_main, shard_work
        from ..io.files import check_output_path
        from ..io.store import ArrayCache

        cfg, v = self.cfg, self.cfg.versions
        path = Path(cfg.fsim_cache) if cfg.fsim_cache is not None else default_cache_path(self.table, ".grepq-fsim")
        cache = ArrayCache(path, FSIM_PURPOSE, "--fsim-cache")
        keys = [fsim_key(self._paths(c)) for c in self.contents]

        def read() -> dict[str, np.ndarray]:
            check_output_path(path, "--fsim-cache", inputs=[self.table.root])
            cache.check()
            return cache.read(keys)

        hits = share_from_main(read)
        missing = [i for i, key in enumerate(keys) if key not in hits]
        work = shard_work(len(missing))
        mine: list[np.ndarray] = []
        if missing:
            with self.stages("FSIM similarities", len(missing), "contents") as advance:
                advance = work.progress(advance)
                for j in work.mine:
                    i = missing[j]
                    mine.append(cached_fsim_matrix({}, keys[i], lambda: self.read_versions(self.contents[i]), v))
                    if advance is not None:
                        advance(1)
        computed = dict(zip((keys[i] for i in missing), work.gather(mine)))
        if computed and is_main_process():
            cache.write(computed)  # a cache that cannot be written only costs the next run the time
        out = {}
        for i, key in enumerate(keys):
            matrix = np.asarray(computed.get(key, hits.get(key)), dtype=np.float64)
            if matrix.shape != (v, v) or not np.isfinite(matrix).all():  # a damaged entry: computed again
                matrix = cached_fsim_matrix({}, key, lambda: self.read_versions(self.contents[i]), v)
            out[i] = matrix
        return out

    # -- the recipe interface ----------------------------------------------------------------------
    def build(self) -> dict[str, nn.Module]:
        from ..models.grepq import LowLevelEncoder

        return {"model": LowLevelEncoder()}

    def optimizer(self, modules) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.AdamW(modules["model"].parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def learning_rate(self, epoch: int, step: int, steps: int) -> float:
        cfg = self.cfg
        return cosine_lr(epoch, step, steps, cfg.epochs, cfg.lr, cfg.min_lr)

    def batches(self, epoch: int) -> list[list[int]]:
        order = seeded_rng(self.seed, SHUFFLE_PURPOSE, epoch).permutation(self.train_ids).tolist()
        size = self.cfg.batch_size
        return [order[k:k + size] for k in range(0, len(order), size)]

    def views(self, ids: Sequence[int], seeds: Sequence[int]) -> dict[str, torch.Tensor]:
        """The two fragment views of each content's versions (float (n, V, 3, S, S)) and its FSIM (n, V, V)."""
        from ..datasets.grepq import fragment_views

        cfg = self.cfg
        v, s = cfg.versions, cfg.fragment_grid * cfg.fragment_piece
        anchors, augmented = [], []
        for i, seed in zip(ids, seeds):
            a, b = fragment_views(self.read_versions(self.contents[i]), np.random.default_rng(int(seed)),
                                  cfg.fragment_grid, cfg.fragment_piece)
            anchors.append(a)
            augmented.append(b)
        empty = torch.zeros((0, v, 3, s, s))
        return {"anchor": torch.stack(anchors) if anchors else empty,
                "augmented": torch.stack(augmented) if augmented else empty,
                "similarity": torch.from_numpy(np.stack([self.similarity[i] for i in ids]).astype(np.float32))
                if len(ids) else torch.zeros((0, v, v))}

    def load(self, shard: Shard) -> dict[str, torch.Tensor]:
        return self.views(shard.items, shard.seeds)

    def forward(self, modules, data: dict[str, torch.Tensor], shard: Shard | None = None) -> dict[str, torch.Tensor]:
        anchor, augmented = data["anchor"].to(self.device), data["augmented"].to(self.device)
        n, v = anchor.shape[:2]
        feats = modules["model"](torch.cat([anchor, augmented]).flatten(0, 1))  # both views in one batch
        feats = feats.view(2, n, v, -1)
        return {"anchor": feats[0], "augmented": feats[1], "similarity": data["similarity"].to(self.device)}

    def after_epoch(self, modules, epoch: int) -> None:
        recalibrate_batch_norm(self, modules["model"], epoch)

    def loss(self, modules, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return qacl_loss(outputs["anchor"], outputs["augmented"], outputs["similarity"], self.cfg.temperature)

    def evaluate(self, modules) -> dict[str, Any]:
        if not self.val_ids:
            return {}
        return {"val_loss": fixed_view_loss(self, modules["model"], self.val_ids)}

    def checkpoint(self, modules) -> dict[str, Any]:
        state = {k: t.detach().cpu() for k, t in modules["model"].state_dict().items()}
        return {"format": CHECKPOINT_FORMAT, "method": METHOD, "state_dict": state, "config": self.config}

    def resume_state(self, modules) -> dict[str, Any]:
        return {"contents": [[c.name, len(c.rows)] for c in self.contents]}

    def restore(self, modules, checkpoint: dict[str, Any]) -> None:
        from ..models.grepq import low_level_state
        from ..weights import load_strict

        path = self.cfg.run_dir / "latest.pth"
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise WeightsError(f"--resume: {path} was not written by 'iqa train --method {METHOD}'; start a new run "
                               "with another --name")
        saved = checkpoint["training"].get("contents")
        if saved is not None and [s[0] for s in saved] != [c.name for c in self.contents]:
            raise WeightsError(f"--resume: {path} was trained on other contents (the database changed); use a new "
                               "--name")
        load_strict(modules["model"], low_level_state(checkpoint, str(path)), source=str(path))


@torch.no_grad()
def fixed_view_loss(recipe: LowLevelRecipe, encoder: nn.Module, ids: Sequence[int], purpose: int = VAL_VIEW_PURPOSE
                    ) -> float:
    """Mean QACL of ``ids``'s contents over views drawn from (seed, purpose, content): the same views
    at every epoch, so the number moves only with the encoder. The encoder is used in its current
    mode; batches of the recipe's batch size are shared among the processes under torchrun."""
    from ..engine import shard_work

    size = recipe.cfg.batch_size
    batches = [list(ids[k:k + size]) for k in range(0, len(ids), size)]
    work = shard_work(len(batches), weights=[len(b) for b in batches])
    mine = []
    for b in work.mine:
        seeds = [int(seeded_rng(recipe.seed, purpose, i).integers(2 ** 62)) for i in batches[b]]
        out = recipe.forward({"model": encoder}, recipe.views(batches[b], seeds))
        mine.append(float(recipe.loss({}, out)) * len(batches[b]))
    return float(sum(work.gather(mine)) / max(len(ids), 1))


@torch.no_grad()
def recalibrate_batch_norm(recipe: LowLevelRecipe, encoder: nn.Module, epoch: int) -> None:
    """Re-estimate the encoder's BatchNorm running statistics as plain averages of the batch
    statistics of up to BN_BATCHES batches of training contents (fixed views of the epoch).

    Training itself only ever uses batch statistics, so this changes nothing in the training; it
    makes the eval-mode encoder -- the one the zero-shot score and the ridge features use -- agree
    with the train-mode one. The exponential average BatchNorm keeps (momentum 0.1) still carries
    its initial mean 0 / variance 1 after a short run, and the eval-mode features then collapse onto
    one direction. Under torchrun each batch is shared among the processes as in training, and
    the synchronised BatchNorm averages the global batch's statistics."""
    from ..engine import shard_bounds

    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not recipe.train_ids:
        return
    size = recipe.cfg.batch_size
    order = seeded_rng(recipe.seed, BN_PURPOSE, epoch).permutation(recipe.train_ids)[:BN_BATCHES * size].tolist()
    momenta = [m.momentum for m in norms]
    was_training = encoder.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    encoder.train()
    try:
        for start in range(0, len(order), size):
            batch = order[start:start + size]
            bounds = shard_bounds(len(batch))  # this process's block, as the loop shards a batch
            mine = batch[bounds.start:bounds.stop]
            seeds = [int(seeded_rng(recipe.seed, BN_PURPOSE, epoch, i).integers(2 ** 62)) for i in mine]
            recipe.forward({"model": encoder}, recipe.views(mine, seeds))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        encoder.train(was_training)


def train_grepq_low(config: GRepQLowConfig, progress=None, stages: Stages = no_stages) -> TrainResult:
    """Train the low-level encoder; see the module docstring. Under torchrun, call it on every process."""
    cfg = validate_low_config(config)
    settings = LoopSettings(
        run_dir=cfg.run_dir, total_epochs=cfg.epochs, config=cfg.to_dict(), resume=cfg.resume,
        seed_from_checkpoint=config.seed is None, resume_keys=RESUME_KEYS, device=cfg.device,
        num_workers=cfg.num_workers, stop_after_epoch=cfg.stop_after_epoch, inputs=(cfg.root,),
        what=f"iqa train --method {METHOD}")
    return run(LowLevelRecipe(cfg, stages), settings, progress)
