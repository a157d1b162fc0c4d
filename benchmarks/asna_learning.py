"""Learning acceptance of `iqa train --method asna` (issue 15): on a synthetic full-reference
database with a planted MOS, does training with the rank term reach a held-out SROCC at least that
of MSE alone?

    python benchmarks/asna_learning.py                       # 3 seeds x 4 losses, ~30 CPU-minutes
    python benchmarks/asna_learning.py --seeds 0 --epochs 4  # a quick look

The database: 16 reference contents (two 48x48 crops from each of 8 of scikit-image's sample
photographs), distorted by `iqa distort` (the KADID-10k generator) with 5 types at 5 levels, 400
pairs in KADID-10k's layout; a dmos.csv plants MOS = 4.8 - slope[type] x (level - 1) + N(0, 0.25^2)
(slopes 0.8, 0.6, 0.9, 0.7, 0.5 for Gaussian blur, JPEG, white noise, impulse noise, pixelate),
so the MOS is a known function of type and level plus noise.

Each loss trains the same small ASNA (the simple preset at 32x32 crops: random crops and the
original's augmentations for training, the central crop for evaluation) with the same seed, hence
the same split (by content: 11-12 training, 2 validation, 3 test contents), initial weights and
batches; Adam 1e-4 (the original's; x0.1 after 2/3 of the epochs), batches of 16, 30 epochs.
Reported: the test SROCC and PLCC at the epoch of the best validation SROCC, per seed and as a
mean, and each loss's paired difference from MSE alone. The losses (m, s of m MSE + (1 - m)(1 - r^2) + s rank):

    mse            m 1,   s 0      MSE alone
    mse+rank       m 1,   s 0.1    MSE and the soft-rank term
    original-soft  m 0.1, s 0.1    the original's weights, soft rank, exact target ranks
    original-sort  m 0.1, s 0.1    the bundled learned sorter (frozen), target ranks through it

One intra-op thread (the machine these numbers come from is shared: timings are not the point).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # db_fixtures: the planted-MOS writer shared with the tests

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field",
          "colorwheel")
TYPES = {1: 0.8, 10: 0.6, 11: 0.9, 13: 0.7, 21: 0.5}  # KADID type id -> MOS drop per level
LOSSES = {
    "mse": dict(mse_weight=1.0, rank_weight=0.0),
    "mse+rank": dict(mse_weight=1.0, rank_weight=0.1),
    "original-soft": dict(mse_weight=0.1, rank_weight=0.1),
    "original-sort": dict(mse_weight=0.1, rank_weight=0.1, ranker="sorter", target_ranks="ranker"),
}


def build_database(root: Path, side: int = 48, noise: float = 0.25, seed: int = 0) -> Path:
    """References, `iqa distort` output and a planted dmos.csv under ``root`` (KADID-10k layout)."""
    import skimage.data
    from PIL import Image

    from db_fixtures import plant_kadid_mos

    from iqa_cli.distort_db import distort_images

    sources = root / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        image = np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])
        h, w = image.shape[:2]
        half = min(h, w // 2)
        for k, x in enumerate((0, w - half)):  # the left and the right square: two contents
            crop = Image.fromarray(image[(h - half) // 2:(h - half) // 2 + half, x:x + half])
            crop.resize((side, side), Image.BICUBIC).save(sources / f"{name.replace('_', '-')}-{k}.png")
    db = root / "db"
    distort_images(sorted(sources.glob("*.png")), db, types=list(TYPES), levels=[1, 2, 3, 4, 5], seed=seed,
                   workers=1)
    rng = np.random.default_rng(seed)
    plant_kadid_mos(db, lambda row: np.clip(4.8 - TYPES[int(row["type"])] * (int(row["level"]) - 1)
                                            + rng.normal(0.0, noise), 1.0, 5.0), var=noise ** 2)
    return db


def train_one(db: Path, out: Path, loss: str, seed: int, epochs: int, size: int, lr: float) -> dict:
    from iqa_cli.training.asna import AsnaTrainConfig, train_asna

    cfg = AsnaTrainConfig(name=f"{loss}-{seed}", database=str(db), cache=str(out / "cache.h5"),
                          checkpoints_dir=str(out / "runs"), size=size, batch_size=16, epochs=epochs, lr=lr,
                          decay_every=max(1, (2 * epochs) // 3), val_fraction=0.15, seed=seed, device="cpu",
                          num_workers=0, **LOSSES[loss])
    tic = time.perf_counter()
    result = train_asna(cfg)
    last = result.run.history[-1]
    return {"loss": loss, "seed": seed, "best_epoch": result.best_epoch, "val_srocc": result.best["val_srocc"],
            "test_srocc": result.best["test_srocc"], "test_plcc": result.best["test_plcc"],
            "last_test_srocc": last["test_srocc"], "n_train": result.run.n_train, "n_val": result.n_val,
            "n_test": result.run.n_test, "seconds": time.perf_counter() - tic}


def _value(x) -> float:
    """A correlation; 0 for NaN (the predictions were constant: no ranking at all)."""
    return 0.0 if x is None or x != x else float(x)


def _cell(x) -> str:
    return "const" if x is None or x != x else f"{x:.3f}"


def summarise(rows: list[dict]) -> str:
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["loss"], r["seed"]): r for r in rows}
    lines = ["| loss | " + " | ".join(f"seed {s}" for s in seeds) + " | mean test SROCC | mean PLCC | "
             "mean diff. vs mse (min, max) |", "|---" * (len(seeds) + 4) + "|"]
    for loss in losses:
        srocc = [_value(by[loss, s]["test_srocc"]) for s in seeds]
        plcc = [_value(by[loss, s]["test_plcc"]) for s in seeds]
        diffs = ([_value(by[loss, s]["test_srocc"]) - _value(by["mse", s]["test_srocc"]) for s in seeds]
                 if loss != "mse" and all(("mse", s) in by for s in seeds) else [])
        diff = f"{statistics.mean(diffs):+.3f} ({min(diffs):+.3f}, {max(diffs):+.3f})" if diffs else "-"
        lines.append(f"| {loss} | " + " | ".join(_cell(by[loss, s]["test_srocc"]) for s in seeds)
                     + f" | {statistics.mean(srocc):.3f} | {statistics.mean(plcc):.3f} | {diff} |")
    return "\n".join(lines) + "\n\n(const: the network's test predictions were constant, SROCC undefined; counted as 0)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--out", type=Path, default=None, help="keep the database, runs and results.json here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="asna_learning_"))
    db = out / "synthetic" / "db"
    if not (db / "dmos.csv").is_file():
        build_database(out / "synthetic")
    shutil.rmtree(out / "runs", ignore_errors=True)
    rows = []
    for seed in args.seeds:
        for loss in args.losses:
            row = train_one(db, out, loss, seed, args.epochs, args.size, args.lr)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    split = rows[0]
    print(f"{split['n_train']} training / {split['n_val']} validation / {split['n_test']} test pairs (seed "
          f"{rows[0]['seed']}); {args.epochs} epochs at {args.size}x{args.size}; test SROCC at the best validation "
          f"epoch:\n")
    print(summarise(rows))
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
