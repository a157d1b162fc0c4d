"""The MOS recipe (Graphics-LPIPS): heads learnt from mean opinion scores in a patch store.

Each epoch every training stimulus contributes ``npatches`` patches (``npatches // n`` full passes
over its ``n`` patches plus ``npatches % n`` drawn without replacement), stimuli are reshuffled,
and each optimiser step sees ``n_input_img`` whole stimuli (the global batch; under torchrun its
stimuli are shared among the processes). A stimulus's predicted score is the mean distance of its
sampled patches; the loss is MSE against MOS, the soft-rank Spearman loss, or both, always over the
whole global batch. Test-set metrics are score-mesh-db's own (evaluate_mos).

Reproducibility: the split and each epoch's sampling come from numpy generators seeded with
(seed, purpose, epoch), and dropout from per-stimulus seeds (training/keyed.py): nothing depends on
saved generator state or on the number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InvalidInputError, WeightsError
from ..losses import mos_loss
from .config import TrainConfig
from .loop import Curves, RunContext, Shard
from .perceptual import SAMPLE_PURPOSE, SPLIT_PURPOSE, PerceptualRecipe, seeded_rng

MIN_TEST_STIMULI = 3  # the correlation statistics need at least three


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
    perm = seeded_rng(seed, SPLIT_PURPOSE).permutation(order)
    n_train = int(round(fraction * len(perm)))
    train, test = sorted(int(i) for i in perm[:n_train]), sorted(int(i) for i in perm[n_train:])
    check(train, test, f"--split {fraction:g} of {len(rows)} usable stimuli (with MOS and patches)")
    return Split(tuple(train), tuple(test), "random", skipped)


def read_batch(store, batch: Sequence[tuple[int, np.ndarray]], first: np.ndarray, mos: np.ndarray,
               refs: np.ndarray) -> dict[str, torch.Tensor]:
    """The patches of ``[(stimulus row, local patch indices), ...]`` (see MOSBatches), or empty
    tensors of the right shapes for an empty batch (a process with no stimuli in a step)."""
    empty = np.zeros(0, dtype=np.int64)
    rows = np.concatenate([first[s] + local for s, local in batch]) if batch else empty
    slot = (np.concatenate([np.full(len(local), j, dtype=np.int64) for j, (_, local) in enumerate(batch)])
            if batch else empty)
    uniq, inverse = np.unique(refs[rows], return_inverse=True)
    return {
        "dist": torch.from_numpy(store.read_distorted_rows(rows)),
        "ref": torch.from_numpy(store.read_reference_rows(uniq)),
        "ref_index": torch.from_numpy(inverse.reshape(-1).astype(np.int64)),
        "slot": torch.from_numpy(slot),
        "mos": torch.tensor([mos[s] for s, _ in batch], dtype=torch.float32),
    }


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
        return read_batch(self.store, self.batches[k], self.first, self.mos, self.refs)


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


def evaluate_mos(model, store, rows: Sequence[int], cfg: TrainConfig, device: torch.device) -> dict:
    """Test-set scores exactly as score-mesh-db computes them (mean over a stimulus's patches of
    min(d, 1), model in eval mode), then the configured loss, raw RMSE, and SROCC/PLCC after the
    same fit score-mesh-db uses (binomial GLM for MOS in [0, 1], else the VQEG 4-parameter logistic)."""
    from ..stats.correlation import correlation_report
    from ..score_db import stimulus_scores

    rows = np.asarray(rows, dtype=np.int64)
    mos = store.stimuli["mos"].to_numpy(dtype=float)[rows]
    was_training = model.training
    model.eval()
    try:  # under torchrun the scorer shares the test stimuli out among the processes
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


def _drop_fit(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "fit"}


def open_training_store(path: str, net: str):
    """The patch store to train on, checked before anything is written: it has patches, MOS and
    patches large enough for the net."""
    from ..engine import check_store_patch_size
    from ..io.store import PatchStore
    from ..models.backbones import BACKBONES

    store = PatchStore.open(path)
    if store.n_patches == 0 or len(store.stimuli) == 0:
        raise InvalidInputError(f"{path}: the store holds no patches ({len(store.stimuli)} stimuli, 0 patches), so "
                                f"there is nothing to train on (rebuild it with iqa patchify: a --patch-size smaller "
                                f"than the renders, or a lower --min-foreground)")
    if not store.has_mos:
        raise InvalidInputError(f"{path}: the store has no MOS, so there is nothing to train on (rebuild it with "
                                f"iqa patchify from a database CSV with a MOS column)")
    check_store_patch_size(store, BACKBONES[net])
    return store


class MOSRecipe(PerceptualRecipe):
    """Items are (stimulus row, sampled local patch indices); outputs per stimulus: its predicted
    score (mean patch distance) and its MOS."""

    unit = "stimuli"
    columns = ("test_loss", "test_rmse", "test_srocc", "test_plcc")
    eval_key = "test_srocc"
    curves = Curves(loss=(("train_loss", "train"), ("test_loss", "test")),
                    score=(("test_srocc", "test SROCC"), ("test_plcc", "test PLCC")), score_label="correlation")

    def prepare(self, ctx: RunContext) -> None:
        super().prepare(ctx)
        cfg = self.cfg
        self.store = open_training_store(cfg.store, cfg.net)
        stimuli = self.store.stimuli
        self.split = make_split(stimuli, cfg, self.seed)
        names = stimuli["stimulus"].astype(str).tolist()
        self.split_names = {"train": [names[i] for i in self.split.train], "test": [names[i] for i in self.split.test],
                            "source": self.split.source}
        saved = (ctx.resumed or {}).get("split")
        if isinstance(saved, dict) and (sorted(self.split_names["train"]) != sorted(saved.get("train", []))
                                        or sorted(self.split_names["test"]) != sorted(saved.get("test", []))):
            raise WeightsError(f"--resume: {cfg.run_dir / 'latest.pth'} was trained on another train/test split "
                               f"(the store or the split CSVs changed); use a new --name")
        self.first = stimuli["first"].to_numpy(dtype=np.int64)
        self.counts = stimuli["count"].to_numpy(dtype=np.int64)
        self.mos = stimuli["mos"].to_numpy(dtype=float)
        self.refs = self.store.patch_refs(0, self.store.n_patches)
        self.train_rows = np.asarray(self.split.train, dtype=np.int64)
        self.n_train, self.n_test = len(self.split.train), len(self.split.test)

    def batches(self, epoch: int) -> list[list[tuple[int, np.ndarray]]]:
        rng = seeded_rng(self.seed, SAMPLE_PURPOSE, epoch)
        batches = epoch_batches(self.counts[self.train_rows], self.cfg.npatches, self.cfg.n_input_img, rng)
        return [[(int(self.train_rows[i]), local) for i, local in batch] for batch in batches]

    def load(self, shard: Shard) -> dict[str, torch.Tensor]:
        return read_batch(self.store, shard.items, self.first, self.mos, self.refs)

    def forward(self, modules, data: dict[str, torch.Tensor], shard: Shard) -> dict[str, torch.Tensor]:
        from ..engine import to_device_float
        from .keyed import item_randomness

        device = self.device
        dist = to_device_float(data["dist"], device)
        ref = to_device_float(data["ref"], device)
        with item_randomness(shard.seeds, [len(local) for _, local in shard.items], device):
            d = _pair_distances(modules["model"], ref, dist, data["ref_index"].to(device), self.cfg.train_trunk)
        return {"pred": _stimulus_means(d, data["slot"].to(device), len(shard.items)), "mos": data["mos"].to(device)}

    def loss(self, modules, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.cfg
        return mos_loss(cfg.loss, outputs["pred"], outputs["mos"], cfg.rank_weight, cfg.rank_temperature)

    def evaluate(self, modules) -> dict[str, Any]:
        return _drop_fit(evaluate_mos(modules["model"], self.store, self.split.test, self.cfg, self.device))

    def resume_state(self, modules) -> dict[str, Any]:
        return {**super().resume_state(modules), "split": self.split_names,
                "store_fingerprint": self.store.fingerprint}
