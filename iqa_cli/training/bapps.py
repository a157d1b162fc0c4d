"""The BAPPS recipe (LPIPS): heads learnt from 2AFC judgments.

Items are triplets of the training subsets; d0 = d(ref, p0) and d1 = d(ref, p1) go through LPIPS's
ranking network (Dist2Logit), trained with BCE against the judge value (the fraction of people who
preferred p1). A step's global batch is ``batch_size`` triplets (shared among the processes under
torchrun); the triplets are reshuffled each epoch from (seed, epoch). Validation is eval-bapps's
own 2AFC score.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..losses import BCERankingLoss
from .config import TrainConfig
from .loop import Curves, RunContext, Shard
from .perceptual import SHUFFLE_PURPOSE, PerceptualRecipe, seeded_rng


def _bapps_subsets(cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """(training subsets, validation subsets), checked against the tree. A bare training name
    (``mix``) means ``train/mix``; validation defaults to every ``val/*`` subset present."""
    from ..datasets.bapps import list_subsets, resolve_subsets

    wanted = [d if "/" in str(d).strip("/") else f"train/{str(d).strip('/')}" for d in cfg.datasets]
    train_sets = resolve_subsets(cfg.bapps_root, "2afc", wanted)
    if cfg.val_datasets is None:
        val_sets = [s for s in list_subsets(cfg.bapps_root, "2afc") if s.startswith("val/")]
    else:
        val_sets = resolve_subsets(cfg.bapps_root, "2afc", list(cfg.val_datasets)) if cfg.val_datasets else []
    return train_sets, val_sets


def two_afc_agreement(d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> torch.Tensor:
    """Per-triplet 2AFC score: [d0<d1](1-h) + [d1<d0]h + 0.5[d0==d1]."""
    d0, d1, h = d0.flatten(), d1.flatten(), judge.flatten().to(d0.dtype)
    return (d0 < d1).to(d0.dtype) * (1 - h) + (d1 < d0).to(d0.dtype) * h + 0.5 * (d0 == d1).to(d0.dtype)


def evaluate_bapps(model, cfg: TrainConfig, subsets: Sequence[str], device: torch.device) -> dict:
    """2AFC scores on the validation subsets through eval-bapps' own code (eval mode)."""
    from ..bapps_eval import eval_bapps

    report = eval_bapps(cfg.bapps_root, mode="2afc", subsets=list(subsets), metric=model, batch_size=cfg.batch_size,
                        device=device, limit=cfg.bapps_limit, num_workers=cfg.num_workers)
    row = {f"val_{name.replace('val/', '', 1).replace('/', '_')}": float(v) for name, v in report.scores.items()}
    row["val_2afc"] = float(report.mean)
    return row


class BAPPSRecipe(PerceptualRecipe):
    """Items are indices into the training subsets (in the order given); outputs per triplet:
    d0, d1 and the judge value. The ranking network (``modules["ranker"]``) is trained too."""

    unit = "triplets"
    columns = ("train_2afc", "val_2afc")
    eval_key = "val_2afc"
    curves = Curves(score=(("train_2afc", "train 2AFC"), ("val_2afc", "val 2AFC")), score_label="2AFC score")

    def prepare(self, ctx: RunContext) -> None:
        from torch.utils.data import ConcatDataset

        from ..datasets.bapps import TwoAFCDataset

        super().prepare(ctx)
        cfg = self.cfg
        train_names, self.val_subsets = _bapps_subsets(cfg)
        self.train_set = ConcatDataset([TwoAFCDataset(cfg.bapps_root, name, load_size=cfg.load_size,
                                                      limit=cfg.bapps_limit) for name in train_names])
        self.n_train = len(self.train_set)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"ranker": BCERankingLoss()}

    def batches(self, epoch: int) -> list[list[int]]:
        seed = int(seeded_rng(self.seed, SHUFFLE_PURPOSE, epoch).integers(2 ** 62))
        order = torch.randperm(self.n_train, generator=torch.Generator().manual_seed(seed)).tolist()
        size = self.cfg.batch_size
        return [order[k:k + size] for k in range(0, len(order), size)]

    def load(self, shard: Shard) -> dict[str, torch.Tensor]:
        items = [self.train_set[i] for i in shard.items]
        if not items:
            s = self.cfg.load_size
            empty = torch.zeros((0, 3, s, s), dtype=torch.uint8)
            return {"ref": empty, "p0": empty, "p1": empty, "judge": torch.zeros(0)}
        return {key: torch.stack([torch.as_tensor(item[key]) for item in items])
                for key in ("ref", "p0", "p1", "judge")}

    def forward(self, modules, data: dict[str, torch.Tensor], shard: Shard) -> dict[str, torch.Tensor]:
        from ..engine import to_device_float
        from .keyed import item_randomness

        model, device = modules["model"], self.device
        n = data["ref"].shape[0]
        x = to_device_float(torch.cat([data["ref"], data["p0"], data["p1"]]), device)
        with torch.set_grad_enabled(self.cfg.train_trunk):
            feats = model.features(x)
        ref = [f[:n] for f in feats]
        with item_randomness(shard.seeds, [1] * n, device):
            d0 = model.distance_from_features(ref, [f[n:2 * n] for f in feats])
            d1 = model.distance_from_features(ref, [f[2 * n:] for f in feats])
        return {"d0": d0, "d1": d1, "judge": data["judge"].to(device).float().flatten()}

    def loss(self, modules, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return modules["ranker"](outputs["d0"], outputs["d1"], outputs["judge"])

    def batch_stats(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"train_2afc": float(two_afc_agreement(outputs["d0"], outputs["d1"], outputs["judge"]).sum())}

    def evaluate(self, modules) -> dict[str, Any]:
        return evaluate_bapps(modules["model"], self.cfg, self.val_subsets, self.device) if self.val_subsets else {}
