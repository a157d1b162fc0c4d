"""GraphIQA learning checks: pretraining separates distortion types and predicts levels; fine-tuning
fits a planted MOS on held-out contents; and the rate of the real training pipeline.

    python benchmarks/graphiqa_learning.py      # small settings: ~15-25 min on a shared 2-core CPU
    python benchmarks/graphiqa_learning.py --device cuda --crop-size 224 --image-side 512 --batch 32 \\
        --steps 200 --epochs 10 --ft-crops 25 --ft-batch 32 --ft-epochs 20 --lr 1e-5 --ft-lr 5e-6

What it does, through the same code as ``iqa train`` (training/graphiqa.py), on files it writes:

1. a handful of real photographs (scikit-image's sample images, centre-cropped to 3:4 and resized so
   their shorter side is ``--image-side``) distorted by ``iqa distort`` (``--types`` x levels 1-5);
2. pretraining on that folder (``--method graphiqa-pretrain``): a quarter of the photographs are held
   out; reported: the held-out triplet accuracy (d(anchor, positive) < d(anchor, negative) on the
   graph codes of fixed held-out triplets; 0.5 is chance) and the SROCC of the predicted level
   against the true level, before training (epoch 0) and after;
3. fine-tuning from that checkpoint (``--method graphiqa``) on the same images in KADID-10k's layout
   with a planted MOS = 4.6 - slope(type) x (level - 1) (slopes differ by type, so the type matters
   too), split by content (test = contents never trained on; validation picks the epoch); reported:
   the test SROCC/PLCC at the best validation epoch, the in-sample SROCC on the training images, and
   (``--scratch``) the same without ``--init``; as a reference, the test SROCC of a ridge regression
   from the same frozen backbone features (what any head on them can reach across contents);
4. rates: pretraining crops/s of the whole pipeline (cache reads, crops, backbone, graphs, loss,
   Adam; the loop's ``units_per_s``) against the ceiling of a ResNet-50 forward alone over the same
   batch of crops, and scoring images/s of GraphIQAScorer on the cached images.

The backbone: torchvision's ImageNet ResNet-50 from the cache when it is there, else (``--backbone
random``, the default when offline) torchvision's random initialisation under ``--seed``, saved to a
file and passed as --backbone-weights. Learning on random features is weaker than on ImageNet ones:
say which one a number comes from. Prints one JSON document; run files go to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "hubble_deep_field", "retina",
          "immunohistochemistry")
SLOPES = (0.9, 0.55, 0.75, 0.4, 0.65, 0.8, 0.5, 0.7)  # MOS per level, by the type's position in --types


def write_photos(folder: Path, names: list[str], side: int) -> list[Path]:
    """Each sample photograph centre-cropped to 3:4 (landscape) and resized to ``side`` x 4/3 side."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        loaded = getattr(skimage.data, name)()
        rgb = np.asarray(loaded[0] if isinstance(loaded, tuple) else loaded)[..., :3]  # stereo: the left view
        h, w = rgb.shape[:2]
        ch, cw = (h, int(h * 4 / 3)) if w >= h * 4 / 3 else (int(w * 3 / 4), w)
        y, x = (h - ch) // 2, (w - cw) // 2
        image = Image.fromarray(np.ascontiguousarray(rgb[y:y + ch, x:x + cw])).resize((side * 4 // 3, side),
                                                                                       Image.BICUBIC)
        path = folder / f"{name.replace('_', '-')}.png"
        image.save(path)
        out.append(path)
    return out


def planted_mos_database(kadis: Path, out: Path, types: list[int]) -> Path:
    """The distorted folder in KADID-10k's layout with dmos.csv: MOS = 4.6 - slope(type) x (level - 1)."""
    shutil.copytree(kadis / "images", out / "images", dirs_exist_ok=True)
    with open(kadis / "listing.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    slope = {t: SLOPES[i % len(SLOPES)] for i, t in enumerate(types)}
    with open(out / "dmos.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["dist_img", "ref_img", "dmos", "var"])
        for row in rows:
            mos = 4.6 - slope[int(row["type"])] * (int(row["level"]) - 1)
            writer.writerow([row["dist_img"], row["ref_img"], f"{mos:.4f}", "0"])
    return out


def backbone_file(kind: str, folder: Path, seed: int) -> str | None:
    """None: torchvision's ImageNet cache; else a random initialisation written to a file."""
    if kind == "imagenet":
        return None
    import torchvision

    torch.manual_seed(seed)
    path = folder / "resnet50_random.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return str(path)


def ceiling_crops_per_s(crop: int, crops: int, device: torch.device, repeats: int = 3) -> float:
    """ResNet-50 forward alone (no autograd) over ``crops`` crops: the least a pretraining step costs."""
    import torchvision

    net = torchvision.models.resnet50(weights=None).to(device).eval()
    x = torch.rand(crops, 3, crop, crop, device=device)
    with torch.no_grad():
        net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return crops * repeats / (time.perf_counter() - start)


def scoring_images_per_s(checkpoint: Path, cache: Path, crops: int, device: torch.device, n: int = 12) -> float:
    """GraphIQAScorer (what score-image runs) on ``n`` cached images, one graph per image."""
    from iqa_cli.datasets.cache import ImageDataset
    from iqa_cli.io.store import ImageStore
    from iqa_cli.models.graphiqa import GraphIQAScorer
    from iqa_cli.weights import load_graphiqa

    store = ImageStore.open(cache)
    data = ImageDataset(store, rows=np.arange(min(n, store.n_rows)))
    images = [data[i][1].permute(2, 0, 1)[None].float().div(255).to(device) for i in range(len(data))]
    scorer = GraphIQAScorer(load_graphiqa(checkpoint), crops=crops).to(device)
    with torch.inference_mode():
        scorer(images[0])
        start = time.perf_counter()
        for image in images:
            scorer(image)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - start)


def split_rows(run_dir: Path, table) -> dict[str, np.ndarray]:
    """Row positions of each part of a run's split.json."""
    split = json.loads((run_dir / "split.json").read_text())
    names = table.rows["name"].to_numpy()
    return {part: np.flatnonzero(np.isin(names, split[part])) for part in ("train", "val", "test")}


def scored(checkpoint: Path, table, store, rows: np.ndarray, crops: int, device: torch.device) -> np.ndarray:
    """What eval-db / score-image give the rows with this checkpoint."""
    from iqa_cli.eval_db import score_table
    from iqa_cli.models.graphiqa import GraphIQAScorer
    from iqa_cli.weights import load_graphiqa

    scorer = GraphIQAScorer(load_graphiqa(checkpoint), crops=crops)
    return score_table(table.select(rows), [scorer], store=store.select(rows), device=device,
                       num_workers=0)[scorer.name]


def ridge_probe(checkpoint: Path, table, store, parts: dict[str, np.ndarray], crops: int,
                device: torch.device) -> float:
    """Test SROCC of a ridge regression from the frozen backbone's pooled features (mean over the
    scorer's crop layout) to MOS, fitted on the training part, its penalty picked on the validation
    part: what a linear head on these features can reach, a reference for the graph layers."""
    from iqa_cli.models.graphiqa import GraphIQAScorer, take_crops
    from iqa_cli.stats.correlation import srocc
    from iqa_cli.weights import load_graphiqa

    model = load_graphiqa(checkpoint).to(device).eval()
    scorer = GraphIQAScorer(model, crops=crops)
    feats = {}
    for part, rows in parts.items():
        out = []
        for row in rows:
            image = torch.from_numpy(np.ascontiguousarray(store.read_row(int(row)))).permute(2, 0, 1)[None]
            offsets = scorer.crop_layout(int(image.shape[2]), int(image.shape[3]))
            with torch.no_grad():
                out.append(model.features(take_crops(image, offsets, model.config.crop_size).to(device))[0]
                           .mean(0).double().cpu().numpy())
        feats[part] = np.stack(out)
    mean, std = feats["train"].mean(0), feats["train"].std(0) + 1e-8
    z = {part: np.c_[(f - mean) / std, np.ones(len(f))] for part, f in feats.items()}
    y = {part: table.scores[rows] for part, rows in parts.items()}

    def fit(alpha: float) -> np.ndarray:
        a = z["train"]
        return np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ y["train"])

    alpha = max(np.logspace(-2, 5, 15), key=lambda a: srocc(z["val"] @ fit(a), y["val"]))
    return srocc(z["test"] @ fit(alpha), y["test"])


def main() -> None:
    from iqa_cli.datasets.formats import read_database
    from iqa_cli.distort_db import distort_images
    from iqa_cli.io.store import ImageStore
    from iqa_cli.stats.correlation import srocc
    from iqa_cli.training import GraphIQATrainConfig, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--photos", type=int, default=8, help=f"how many of {', '.join(PHOTOS)}")
    parser.add_argument("--types", default="1,10,11,16,21", help="distortion types (iqa distort numbers)")
    parser.add_argument("--image-side", type=int, default=96, help="shorter side of the photographs")
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--embed-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="pretraining: crops per graph")
    parser.add_argument("--steps", type=int, default=30, help="pretraining: steps per epoch")
    parser.add_argument("--epochs", type=int, default=4, help="pretraining epochs")
    parser.add_argument("--lr", type=float, default=1e-4, help="pretraining learning rate (published: 1e-5)")
    parser.add_argument("--eval-triplets", type=int, default=30)
    parser.add_argument("--ft-crops", type=int, default=5)
    parser.add_argument("--ft-batch", type=int, default=16)
    parser.add_argument("--ft-epochs", type=int, default=6)
    parser.add_argument("--ft-lr", type=float, default=5e-5, help="fine-tuning learning rate (published: 5e-6)")
    parser.add_argument("--scratch", action="store_true", help="also fine-tune without --init, for comparison")
    parser.add_argument("--backbone", choices=("random", "imagenet"), default="random")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the run files here (default: a temporary folder)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    types = [int(t) for t in args.types.split(",")]
    work = args.out or Path(tempfile.mkdtemp(prefix="graphiqa_learning_"))
    work.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()

    photos = write_photos(work / "photos", list(PHOTOS[:args.photos]), args.image_side)
    distort_images(photos, work / "kadis", types=types, levels=[1, 2, 3, 4, 5], seed=args.seed)
    planted = planted_mos_database(work / "kadis", work / "planted", types)
    backbone = backbone_file(args.backbone, work, args.seed)
    common = dict(checkpoints_dir=str(work / "runs"), crop_size=args.crop_size, device=args.device, seed=args.seed,
                  backbone_weights=backbone, split=0.75, num_workers=0 if device.type == "cpu" else None)
    pre = train(GraphIQATrainConfig(name="pretrain", method="graphiqa-pretrain", database=str(work / "kadis"),
                                    cache=str(work / "kadis.h5"), embed_size=args.embed_size, batch_size=args.batch,
                                    steps=args.steps, nepoch=args.epochs, lr=args.lr,
                                    eval_triplets=args.eval_triplets, **common))
    first, last = pre.history[0], pre.history[-1]
    fine = {}
    for name, init in (("from_pretrained", str(pre.checkpoint)), ("from_scratch", None)):
        if init is None and not args.scratch:
            continue
        run = train(GraphIQATrainConfig(name=f"finetune_{name}", method="graphiqa", database=str(planted),
                                        cache=str(work / "planted.h5"), init=init, embed_size=args.embed_size,
                                        crops=args.ft_crops, batch_size=args.ft_batch, nepoch=args.ft_epochs,
                                        lr=args.ft_lr, **common))
        best = run.best
        table, store = read_database(planted), ImageStore.open(work / "planted.h5")
        parts = split_rows(run.run_dir, table)
        fit = scored(run.best_checkpoint, table, store, parts["train"], args.ft_crops, device)
        fine[name] = {"best_epoch": best["epoch"], "val_srocc": best["val_srocc"], "test_srocc": best["test_srocc"],
                      "test_plcc": best["test_plcc"], "test_rmse": best["test_rmse"],
                      "test_srocc_epoch0": run.history[0]["test_srocc"],
                      "train_srocc_in_sample": srocc(fit, table.scores[parts["train"]]), "n_train": run.n_train,
                      "n_test": run.n_test, "images_per_s": float(np.mean([r["units_per_s"] for r in run.history[1:]]))}
    if fine:  # the backbone is frozen: any run's checkpoint has the same features
        fine["ridge_probe_test_srocc"] = ridge_probe(run.best_checkpoint, table, store, parts, args.ft_crops, device)
    pipeline = float(np.mean([r["units_per_s"] for r in pre.history[1:]]))
    ceiling = ceiling_crops_per_s(args.crop_size, 3 * args.batch, device)
    scoring = scoring_images_per_s(pre.checkpoint, work / "kadis.h5", args.ft_crops, device)
    print(json.dumps({
        "device": str(device), "threads": torch.get_num_threads(), "backbone": args.backbone,
        "photos": args.photos, "types": types, "image_side": args.image_side, "crop_size": args.crop_size,
        "embed_size": args.embed_size,
        "pretraining": {"steps": args.steps * args.epochs, "batch": args.batch, "lr": args.lr,
                        "train_images": pre.n_train, "held_out_images": pre.n_test,
                        "held_out_triplets": args.eval_triplets,
                        "triplet_accuracy_before": first["test_triplet_acc"],
                        "triplet_accuracy_after": last["test_triplet_acc"],
                        "level_srocc_before": first["test_level_srocc"], "level_srocc_after": last["test_level_srocc"],
                        "held_out_loss_before": first["test_loss"], "held_out_loss_after": last["test_loss"]},
        "finetuning": {"crops": args.ft_crops, "batch": args.ft_batch, "epochs": args.ft_epochs, "lr": args.ft_lr,
                       **fine},
        "rates": {"pretrain_pipeline_crops_per_s": round(pipeline, 2),
                  "backbone_ceiling_crops_per_s": round(ceiling, 2),
                  "pipeline_fraction_of_ceiling": round(pipeline / ceiling, 3),
                  "scoring_images_per_s": round(scoring, 3), "scoring_crops": args.ft_crops},
        "seconds": round(time.perf_counter() - tic, 1), "run_files": str(work),
    }, indent=1, default=float))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
