"""How well a briefly trained GRepQ low-level encoder ranks distortion levels, zero-shot (not a test).

    python benchmarks/grepq_low_zero_shot.py                       # the tests' setting, seeds 0 and 1
    python benchmarks/grepq_low_zero_shot.py --epochs 12 --batch-size 8 --seeds 0 1 2 --json

Data, all from scikit-image's photographs (nothing downloaded): 8 training contents at 96x128 and 6
held-out contents at 144x192, each distorted by `iqa distort` (Gaussian blur, JPEG, white noise at
levels 1, 3, 5), and a pristine store cut from 4 photographs at their own size. For each seed it
trains `iqa train --method grepq-low` (3 versions per content, 4x16-pixel fragment views, AdamW),
then scores the held-out distorted images with the registry's zero-shot grepq metric (low-level
part, Q_L) and reports the SROCC between Q_L and -level, as the mean over (content, type) groups
and pooled over all images, for three encoders: untrained (BatchNorm's initial statistics),
untrained with BatchNorm re-estimated on the training views (what the recipe does after every
epoch), and trained. A short CPU run is far from the paper's numbers; this only shows the trend.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TRAIN = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "camera", "brick", "gravel")
HELD_OUT = ("immunohistochemistry", "hubble_deep_field", "retina", "coins", "clock", "colorwheel")
PRISTINE = ("astronaut", "coffee", "rocket", "stereo_motorcycle")


def photo(name: str, hw: tuple[int, int] | None = None) -> np.ndarray:
    from PIL import Image
    from skimage import data

    x = getattr(data, name)()
    x = x[0] if isinstance(x, tuple) else x
    x = np.dstack([x] * 3) if x.ndim == 2 else x[..., :3]
    return x if hw is None else np.asarray(Image.fromarray(x).resize((hw[1], hw[0]), Image.BOX))


def build_data(root: Path) -> None:
    from PIL import Image

    from iqa_cli.distort_db import distort_images

    for folder, names, hw in (("train_src", TRAIN, (96, 128)), ("held_src", HELD_OUT, (144, 192)),
                              ("pristine", PRISTINE, None)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.fromarray(photo(name, hw)).save(root / folder / f"{name}.png")
    for src, out in (("train_src", "train"), ("held_src", "held")):
        distort_images([root / src], root / out, types=[1, 10, 11], levels=[1, 3, 5], seed=0, workers=1)


def srocc_by_level(scores: np.ndarray, table) -> tuple[float, float]:
    from iqa_cli.stats.correlation import srocc

    rows = table.rows
    groups = [srocc(scores[g.index], -g["level"].to_numpy()) for _, g in rows.groupby(["content", "type"])]
    return float(np.mean(groups)), srocc(scores, -rows["level"].to_numpy())


def run_seed(root: Path, seed: int, args) -> dict:
    import torch

    from iqa_cli.datasets.formats import read_database
    from iqa_cli.io.images import load_image
    from iqa_cli.models.grepq import GRepQZeroShot, LowLevelEncoder, load_low_level_encoder
    from iqa_cli.pristine import grepq_pristine_mvg
    from iqa_cli.training.grepq_low import (GRepQLowConfig, LowLevelRecipe, recalibrate_batch_norm,
                                            train_grepq_low, validate_low_config)
    from iqa_cli.training.loop import RunContext

    cfg = GRepQLowConfig(name=f"seed{seed}", root=str(root / "train"), checkpoints_dir=str(root / "runs"), versions=3,
                         batch_size=args.batch_size, epochs=args.epochs, lr=args.lr, fragment_grid=4,
                         fragment_piece=16, seed=seed, device="cpu", num_workers=0, cache=str(root / "images.h5"),
                         fsim_cache=str(root / "fsim.h5"))
    tic = time.perf_counter()
    result = train_grepq_low(cfg)
    seconds = time.perf_counter() - tic
    recipe = LowLevelRecipe(validate_low_config(cfg))
    recipe.prepare(RunContext(seed, torch.device("cpu"), 0, cfg.to_dict(), None))
    torch.manual_seed(seed)
    untrained = LowLevelEncoder()
    recalibrated = copy.deepcopy(untrained)
    recalibrate_batch_norm(recipe, recalibrated, 1)
    table = read_database(root / "held")
    images = torch.stack([torch.from_numpy(load_image(p)) for p in table.rows["dist"]])
    out = {"seed": seed, "train_seconds": seconds, "final_train_loss": result.history[-1]["train_loss"]}
    for name, encoder in (("untrained", untrained), ("untrained, BN re-estimated", recalibrated),
                          ("trained", load_low_level_encoder(result.checkpoint))):
        encoder.eval()
        metric = GRepQZeroShot(encoder, grepq_pristine_mvg(root / "pristine.h5", encoder))
        with torch.no_grad():
            groups, pooled = srocc_by_level(metric(images).numpy(), table)
        out[name] = {"srocc_per_group": groups, "srocc_pooled": pooled}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4, help="contents per step (8 training contents)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from iqa_cli.pristine import build_pristine_store

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="grepq_zero_shot_") as tmp:
        root = Path(tmp)
        build_data(root)
        store = build_pristine_store(root / "pristine", root / "pristine.h5", sharpness=0.5, colourfulness=0.0)
        results = [run_seed(root, seed, args) for seed in args.seeds]
    doc = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "pristine_patches": store.n_patches,
           "held_out_images": 6 * 9, "results": results}
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"{args.epochs} epochs x {8 // args.batch_size} steps of {args.batch_size} contents, lr {args.lr:g}; "
          f"{store.n_patches} pristine patches; SROCC(Q_L, -level) on 54 held-out images")
    print(f"{'seed':>4}  {'encoder':<28} {'per (content, type)':>20} {'pooled':>8}")
    for r in results:
        for name in ("untrained", "untrained, BN re-estimated", "trained"):
            print(f"{r['seed']:>4}  {name:<28} {r[name]['srocc_per_group']:>20.3f} {r[name]['srocc_pooled']:>8.3f}")
        print(f"      (training {r['train_seconds']:.0f} s, final train loss {r['final_train_loss']:.4f})")


if __name__ == "__main__":
    main()
