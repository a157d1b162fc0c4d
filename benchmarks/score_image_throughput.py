"""Images/s of `iqa score-image` for every no-reference metric, against the per-file loop a user writes.

    python benchmarks/score_image_throughput.py                        # CPU, every nr metric, 8 photographs
    python benchmarks/score_image_throughput.py --metrics niqe,grepq --images 32 --rounds 5
    python benchmarks/score_image_throughput.py --threads 1 --crops 5  # one torch thread; GraphIQA on 5 crops
    python benchmarks/score_image_throughput.py --device cuda --images 256 --batch-size 32 --rounds 5 \\
        --workdir /tmp/nr-bench --json nr-gpu.json

Photographs from scikit-image (benchmarks/bench_photos.py: resized to cover --size, 512x384 by
default, centre-cropped, mirrored to make more) are written as PNG files to a folder. Every metric
of `iqa list-metrics --kind nr` (or --metrics) is built once, outside the clock, the way the command
builds it (cli.common.build_metrics -> registry.create_metric), from files written here with
random weights: speed does not depend on the values, and nothing is downloaded (IQA_OFFLINE=1 and a
private TORCH_HOME whose "ImageNet" ResNet-50 is random):

  niqe          the bundled official pristine model
  grepq         a random low-level encoder, a pristine store of two photographs, and a random CLIP
                RN50 (open_clip; --no-clip scores the low-level part alone)
  grepq-ridge   a ridge.pth as 'iqa train --method grepq-ridge' writes it, on the same encoders
  graphiqa      a native checkpoint (K 64) whose ResNet-50 comes from the torchvision cache

Then, after one warm-up of each side (the first batch, the first file), --rounds rounds in which
every metric runs both sides (metrics interleaved so machine noise hits all alike; the order of
the two sides alternates from round to round):

  iqa    what `iqa score-image FOLDER -m METRIC --batch-size N` runs: plan_images (the folder
         listed, every header read) and score_images (same-size batches, loader, device copies)
  loop   one file at a time: PIL opens it, torchvision's to_tensor, metric(x[None]) on the same
         metric object, float(score); the metric runs without autograd, as any call does

Before any rate is printed, the scores of both sides must agree to --tolerance (1e-4) relative;
a metric whose scores differ is reported as such and the script exits 1. Printed: median
images/s of each side, the median over rounds of their ratio (each round's pair ran back to back),
the largest relative difference, and the build time of each metric (loading weights, fitting
GRepQ's pristine Gaussian, embedding the CLIP prompts); --json also keeps each round's seconds
and the iqa side's score of every file (weights and images are seeded, so the scores of a --device
cuda run can be set beside a CPU run's). The defaults take 5 to 8 minutes on a 2-core CPU with
--threads 1, GraphIQA's 25 ResNet-50 crops per image most of it (--crops 5 for a quick look). On
a shared 2-core CPU, --threads 1 is steadier: two torch threads there can stall each other
(OpenMP spin-waits) when other work runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from bench_photos import write_photographs  # beside this file (sys.path[0])
from bench_weights import write_random_clip, write_random_low_level, write_random_torchvision_files

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# -- weights, all random, written where the loaders look -------------------------------------
def write_pristine_store(root: Path, width: int, height: int) -> Path:
    from iqa_cli.pristine import build_pristine_store

    folder = root / "pristine"
    write_photographs(folder, 2, width, height)
    out = root / "pristine.h5"
    # all patches kept: the selection thresholds do not matter for speed
    build_pristine_store(folder, out, sharpness=0.0, colourfulness=0.0, force=True)
    return out


def write_ridge(root: Path, low_path: Path, clip_path: Path | None) -> Path:
    """ridge.pth in the format of 'iqa train --method grepq-ridge': random coefficients on the
    encoders' features, their files and weights hashes recorded."""
    from iqa_cli.models import grepq_ridge
    from iqa_cli.models.grepq import load_high_level_encoder, load_low_level_encoder

    low = load_low_level_encoder(low_path)
    high = load_high_level_encoder(clip_path) if clip_path is not None else None
    extractor = grepq_ridge.GRepQFeatureExtractor(low, high)
    coef = np.random.default_rng(7).normal(0, 1 / math.sqrt(extractor.dim), extractor.dim)
    sources = {"low_level_weights": str(low_path), "clip_weights": None if clip_path is None else str(clip_path)}
    table = SimpleNamespace(database="synthetic", root=root, score_name="MOS", higher_better=True)
    path = root / "ridge.pth"
    hashes = grepq_ridge.encoder_hashes(low, high)
    torch.save(grepq_ridge.ridge_payload(coef, 3.0, 1.0, extractor, sources, hashes, table), path)
    return path


def write_graphiqa(root: Path) -> Path:
    """A native checkpoint of the default configuration; its backbone is the cached 'ImageNet' one,
    so the checkpoint leaves it out and the loader reads the torchvision cache, as for a trained run."""
    from iqa_cli.weights import load_graphiqa, save_graphiqa_checkpoint

    write_random_torchvision_files(["resnet50"])
    torch.manual_seed(4)
    return save_graphiqa_checkpoint(root / "graphiqa.pth", load_graphiqa(None, backbone_weights="imagenet"))


def metric_options(name: str, root: Path, args, made: dict) -> dict:
    """The create_metric options for ``name``, writing the files it needs once (``made`` caches them)."""
    def once(key, fn):
        if key not in made:
            made[key] = fn()
        return made[key]

    clip = None if args.no_clip else (lambda: once("clip", lambda: write_random_clip(root / "clip_rn50.pt")))
    if name == "grepq":
        return {"low_level_weights": once("low", lambda: write_random_low_level(root / "grepq_low.pth")),
                "pristine": once("pristine", lambda: write_pristine_store(root, *args.size)),
                "clip_weights": clip() if clip else None}
    if name == "grepq-ridge":
        low = once("low", lambda: write_random_low_level(root / "grepq_low.pth"))
        clip_path = clip() if clip else None
        return {"checkpoint": once("ridge", lambda: write_ridge(root, low, clip_path))}
    if name == "graphiqa":
        return {"checkpoint": once("graphiqa", lambda: write_graphiqa(root)), "crops": args.crops}
    return {}  # niqe, and any no-reference metric that needs no file


# -- the two sides -----------------------------------------------------------------------------
def run_iqa(folder: Path | None, metric, args, plan=None) -> dict[str, float]:
    """`iqa score-image FOLDER -m METRIC`'s library path; {file name: score}."""
    from iqa_cli.score_images import plan_images, score_images

    plan = plan if plan is not None else plan_images([folder])
    results = score_images(plan, [metric], batch_size=args.batch_size, device=args.device, num_workers=args.workers)
    return {r.image.name: r.score for r in results}


def run_loop(files: list[Path], metric, device: torch.device) -> dict[str, float]:
    """The loop a user writes: one file at a time through PIL and to_tensor."""
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    out = {}
    for path in files:
        with Image.open(path) as im:
            x = to_tensor(im.convert("RGB"))
        out[path.name] = float(metric(x[None].to(device)))
    return out


def max_relative_difference(a: dict[str, float], b: dict[str, float]) -> float:
    """Largest |a - b| / |b| over the files (both NaN counts as equal; one NaN as infinite)."""
    worst = 0.0
    for key, ref in b.items():
        got = a[key]
        if math.isnan(got) and math.isnan(ref):
            continue
        diff = abs(got - ref) / max(abs(ref), 1e-12)
        worst = max(worst, math.inf if math.isnan(diff) else diff)
    return worst


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def width_height(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 512x384") from None
    if min(width, height) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sides must be positive")
    return width, height


# -- main --------------------------------------------------------------------------------------
def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--metrics", default=None, help="comma-separated no-reference metrics (default: every one in "
                    "'iqa list-metrics --kind nr')")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--batch-size", type=int, default=16, help="score-image's --batch-size (default: its own, 16)")
    ap.add_argument("--workers", type=int, default=None, help="score-image's --workers (default: its own choice)")
    ap.add_argument("--images", type=int, default=8, help="photographs to score")
    ap.add_argument("--size", type=width_height, default=(512, 384), metavar="WxH", help="image size (default 512x384)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (the median is reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--crops", type=int, default=None, help="GraphIQA crops per image (default: the metric's, 25)")
    ap.add_argument("--no-clip", action="store_true", help="GRepQ without CLIP: the low-level part alone")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="largest relative difference of the two sides")
    ap.add_argument("--workdir", type=Path, default=None, help="keep images and weights here (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON here")
    args = ap.parse_args()
    if min(args.images, args.batch_size, args.rounds) < 1:
        ap.error("--images, --batch-size and --rounds must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="nr-bench-") as tmp:
        root = (args.workdir or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        # nothing downloaded, nothing written outside root: a private torchvision cache and iqa cache
        os.environ.update({"IQA_OFFLINE": "1", "TORCH_HOME": str(root / "torch_home"),
                           "IQA_CACHE_DIR": str(root / "cache"), "HF_HUB_OFFLINE": "1"})
        return benchmark(args, root)


def benchmark(args, root: Path) -> int:
    from iqa_cli.cli.common import build_metrics
    from iqa_cli.engine import resolve_device
    from iqa_cli.errors import IQAError
    from iqa_cli.registry import get_spec, list_metrics
    from iqa_cli.score_images import plan_images

    device = resolve_device(args.device)
    try:
        specs = [get_spec(n) for n in args.metrics.split(",") if n.strip()] if args.metrics else list_metrics("nr")
    except IQAError as exc:
        print(f"error: --metrics: {exc}", file=sys.stderr)
        return 2
    wrong = [s.name for s in specs if s.kind != "nr"]
    if wrong:
        print(f"error: --metrics: {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} full-reference; this "
              f"benchmark times no-reference metrics ('iqa list-metrics --kind nr')", file=sys.stderr)
        return 2
    names = list(dict.fromkeys(s.name for s in specs))
    folder = root / "images"
    for old in folder.glob("photo_*.png"):  # a kept --workdir may hold another --images/--size
        old.unlink()
    files = write_photographs(folder, args.images, *args.size)
    print(f"{args.images} photographs {args.size[0]}x{args.size[1]} in {folder}; device {device}; torch threads "
          f"{torch.get_num_threads()}; batch {args.batch_size}; {args.rounds} rounds", file=sys.stderr, flush=True)

    metrics, build_s, skipped, made = {}, {}, {}, {}
    for name in names:
        t0 = time.perf_counter()
        try:
            options = metric_options(name, root, args, made)
            t0 = time.perf_counter()  # the clock covers what `iqa score-image` does: loading, not writing files
            metrics[name] = build_metrics([name], kind="nr", device=str(device), **options)[0]
        except (IQAError, ImportError) as exc:
            skipped[name] = str(exc).splitlines()[0]
            if isinstance(exc, ImportError):  # open_clip, GRepQ's optional extra
                skipped[name] += " (pip install 'iqa-cli[clip]', or --no-clip for GRepQ's low-level part alone)"
            print(f"{name}: cannot be built here, skipped: {skipped[name]}", file=sys.stderr, flush=True)
            continue
        build_s[name] = time.perf_counter() - t0
        print(f"{name}: {metrics[name].describe()}, built in {build_s[name]:.1f} s", file=sys.stderr, flush=True)

    warm_plan = plan_images(files[:args.batch_size])
    for name, metric in metrics.items():  # warm-up: allocator, kernels, lazy imports
        run_iqa(None, metric, args, plan=warm_plan)
        run_loop(files[:1], metric, device)
    synchronise(device)

    times = {name: {"iqa": [], "loop": []} for name in metrics}
    scores: dict[str, dict[str, dict[str, float]]] = {name: {} for name in metrics}
    for r in range(args.rounds):
        for name, metric in metrics.items():
            for side in (("iqa", "loop") if r % 2 == 0 else ("loop", "iqa")):
                t0 = time.perf_counter()
                got = run_iqa(folder, metric, args) if side == "iqa" else run_loop(files, metric, device)
                synchronise(device)
                times[name][side].append(time.perf_counter() - t0)
                scores[name][side] = got
            print(f"round {r + 1} {name}: iqa {args.images / times[name]['iqa'][-1]:.2f}, loop "
                  f"{args.images / times[name]['loop'][-1]:.2f} images/s", file=sys.stderr, flush=True)

    rows = []
    for name, metric in metrics.items():
        iqa_rate, loop_rate = (args.images / statistics.median(times[name][s]) for s in ("iqa", "loop"))
        rel = max_relative_difference(scores[name]["iqa"], scores[name]["loop"])
        values = np.array(list(scores[name]["iqa"].values()))
        agree = rel <= args.tolerance
        rows.append({"metric": name, "describe": metric.describe(), "build_s": build_s[name], "agree": agree,
                     "max_rel_diff": rel, "images_per_s": {"iqa": iqa_rate, "loop": loop_rate} if agree else None,
                     # per round (the two sides ran back to back, so they shared that round's machine noise)
                     "ratio": statistics.median(lt / it for it, lt in zip(times[name]["iqa"], times[name]["loop"]))
                     if agree else None,
                     "score_range": [float(np.nanmin(values)), float(np.nanmax(values))],
                     "seconds": times[name],
                     # seeded weights and images: a --device cuda run's scores can be compared with a CPU run's
                     "scores": scores[name]["iqa"]})
    result = {"images": args.images, "size": list(args.size), "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
              "workers": args.workers, "rounds": args.rounds, "tolerance": args.tolerance, "metrics": rows,
              "skipped": skipped}
    print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        if not row["agree"]:
            print(f"error: {row['metric']}: iqa and the loop differ by {row['max_rel_diff']:.1e} relative (tolerance "
                  f"{args.tolerance:g}); its rates are not reported", file=sys.stderr)
    return 0 if all(row["agree"] for row in rows) else 1


def print_table(rows) -> None:
    print(f"{'metric':<13} {'iqa img/s':>10} {'loop img/s':>11} {'iqa/loop':>9} {'max rel diff':>13} {'build s':>8}"
          f"  as run")
    for r in rows:
        if r["agree"]:
            rates = f"{r['images_per_s']['iqa']:>10.2f} {r['images_per_s']['loop']:>11.2f} {r['ratio']:>8.2f}x"
        else:
            rates = f"{'scores differ':>32}"
        print(f"{r['metric']:<13} {rates} {r['max_rel_diff']:>13.1e} {r['build_s']:>8.1f}  {r['describe']}")


if __name__ == "__main__":
    sys.exit(main())
