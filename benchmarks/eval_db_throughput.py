"""Images/s of `iqa eval-db` (first run and cached run) against a per-file loop of the same metrics.

    python benchmarks/eval_db_throughput.py                        # 4 references x 25 types x 2 levels
    python benchmarks/eval_db_throughput.py --refs 81 --levels 1,2,3,4,5 --types all   # KADID-sized
    python benchmarks/eval_db_throughput.py --device cuda --refs 20

A KADID-10k-shaped database is generated once with `iqa distort` (512x384 photographs from
scikit-image, the KADID layout and listing, plus made-up MOS so the statistics run), then, with
SSIM and LPIPS (alex) together:

  first     eval_db with a fresh image cache: decode every file into HDF5, then score
  cached    eval_db again: the images stream from the cache
  loop      what a user would otherwise write: for each row, read both files with PIL, make
            tensors, call each metric on the pair (the same metric objects, so the arithmetic is
            the same; only the I/O and batching differ)

Rounds are interleaved (cached, loop, cached, loop, ...) so machine noise hits both alike; the
medians and the ratios are printed, and the scores of the cached run and the loop are compared.
Speed does not depend on the backbone's weights: without cached ImageNet weights it is random.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from iqa_cli import create_metric
from iqa_cli.datasets.cache import build_image_cache, open_image_cache
from iqa_cli.datasets.formats import read_database
from iqa_cli.distort_db import distort_images
from iqa_cli.eval_db import eval_db
from iqa_cli.io.images import load_image
from iqa_cli.weights import torchvision_cache_file
from iqa_cli.models.backbones import BACKBONES

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "hubble_deep_field",
          "colorwheel", "motorcycle_left", "retina")


def make_references(folder: Path, n: int) -> list[Path]:
    """n 512x384 photographs: crops of scikit-image's samples, flipped/offset when n exceeds them."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        name = PHOTOS[i % len(PHOTOS)]
        try:
            img = getattr(data, name)()
        except Exception:  # noqa: BLE001 - a sample that needs a download: use another
            img = data.astronaut()
        img = np.asarray(Image.fromarray(img[..., :3] if img.ndim == 3 else img).convert("RGB"))
        pil = Image.fromarray(img)
        scale = max(512 / pil.width, 384 / pil.height) * (1 + 0.1 * (i // len(PHOTOS)))
        pil = pil.resize((int(round(pil.width * scale)), int(round(pil.height * scale))), Image.BICUBIC)
        left, top = (pil.width - 512) // 2, (pil.height - 384) // 2
        crop = pil.crop((left, top, left + 512, top + 384))
        if (i // len(PHOTOS)) % 2:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        path = folder / f"I{i + 1:02d}.png"
        crop.save(path)
        paths.append(path)
    return paths


def build_database(root: Path, refs: int, types: list[int] | None, levels: list[int]) -> Path:
    db = root / "kadid"
    if (db / "dmos.csv").exists():
        return db
    sources = make_references(root / "sources", refs)
    distort_images(sources, db, types=types, levels=levels, seed=0)
    rng = np.random.default_rng(0)
    with open(db / "listing.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(db / "dmos.csv", "w", newline="") as fh:  # made-up MOS: only the statistics' cost matters here
        writer = csv.writer(fh)
        writer.writerow(["dist_img", "ref_img", "dmos", "var"])
        for r in rows:
            writer.writerow([r["dist_img"], r["ref_img"], round(5 - 0.7 * int(r["level"]) + rng.normal(0, 0.3), 3),
                             0.1])
    (db / "listing.csv").unlink()
    return db


def loop_scores(table, metrics) -> dict[str, np.ndarray]:
    out = {m.name: np.empty(len(table)) for m in metrics}
    with torch.inference_mode():
        for i, (dist, ref) in enumerate(zip(table.rows["dist"], table.rows["ref"])):
            d = torch.from_numpy(load_image(dist))[None]
            r = torch.from_numpy(load_image(ref))[None]
            for m in metrics:
                out[m.name][i] = float(m(r, d))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--refs", type=int, default=4, help="reference photographs (KADID-10k has 81)")
    ap.add_argument("--types", default="all", help="distortion types, e.g. 1,3,10 (default: all 25)")
    ap.add_argument("--levels", default="1,3", help="levels (KADID-10k: 1,2,3,4,5)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the cached run and the loop")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the database here (default: a temp folder)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    types = None if args.types == "all" else [int(t) for t in args.types.split(",")]
    levels = [int(v) for v in args.levels.split(",")]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="iqa-evaldb-bench-"))
    t0 = time.perf_counter()
    db = build_database(work, args.refs, types, levels)
    table = read_database(db, "kadid10k")
    generation = time.perf_counter() - t0
    imagenet = torchvision_cache_file(BACKBONES["alex"]).is_file()
    metrics = [create_metric("ssim", device=args.device),
               create_metric("lpips", net="alex", device=args.device,
                             backbone_weights="imagenet" if imagenet else "random")]
    cache = work / "cache.h5"
    if cache.exists():
        cache.unlink()

    def timed(fn):
        start = time.perf_counter()
        value = fn()
        return time.perf_counter() - start, value

    def first_run():
        build_image_cache(table, cache)
        return eval_db(table, metrics, store=open_image_cache(cache, table), batch_size=args.batch_size,
                       device=args.device, bootstrap=0)

    first_s, _ = timed(first_run)
    cached_s, loop_s = [], []
    cached = loop = None
    for _ in range(args.repeats):
        s, cached = timed(lambda: eval_db(table, metrics, store=open_image_cache(cache, table),
                                          batch_size=args.batch_size, device=args.device, bootstrap=0))
        cached_s.append(s)
        s, loop = timed(lambda: loop_scores(table, metrics))
        loop_s.append(s)
    n = len(table)
    diffs = {m.name: float(np.nanmax(np.abs(cached.scores[m.name] - loop[m.name]))) for m in metrics}
    report = {
        "images": n, "references": args.refs, "size": "512x384", "device": args.device,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "backbone": "ImageNet" if imagenet else "random (no cached ImageNet weights; speed is the same)",
        "generation_s": round(generation, 1),
        "first_run_images_per_s": n / first_s,
        "cached_images_per_s": n / statistics.median(cached_s),
        "loop_images_per_s": n / statistics.median(loop_s),
        "cached_over_loop": statistics.median(loop_s) / statistics.median(cached_s),
        "first_over_loop": statistics.median(loop_s) / first_s,
        "max_abs_score_difference": diffs,
        "rounds": args.repeats,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"eval-db on {n} images ({args.refs} references, 512x384), SSIM + LPIPS alex, {args.device}, "
          f"{torch.get_num_threads()} threads; backbone {report['backbone']}")
    print(f"  first run (cache build + scoring): {report['first_run_images_per_s']:8.1f} images/s")
    print(f"  cached run (median of {args.repeats}):      {report['cached_images_per_s']:8.1f} images/s")
    print(f"  per-file loop (median of {args.repeats}):   {report['loop_images_per_s']:8.1f} images/s")
    print(f"  cached / loop: {report['cached_over_loop']:.2f}x   first / loop: {report['first_over_loop']:.2f}x")
    print(f"  largest score difference cached vs loop: {diffs}")


if __name__ == "__main__":
    sys.exit(main())
