"""Pairs/s of `iqa score-pair` (SSIM + LPIPS) against the per-file loop a pyiqa-style user writes.

    python benchmarks/score_pair_throughput.py                        # CPU, 200 pairs of 512x384
    python benchmarks/score_pair_throughput.py --device cuda --repeats 7
    python benchmarks/score_pair_throughput.py --pairs 20 --repeats 2  # a quick check

A folder of distorted photographs (scikit-image's, cropped to 512x384, each with one KADID-type
distortion from iqa_cli.distortions) is written once as PNG files, REF/ and DIST/ matched by name
(``--data DIR`` keeps and reuses it). Then, in interleaved rounds so machine noise hits every
method alike, the same scores are computed:

  iqa bN     what `iqa score-pair REF DIST -m ssim -m lpips --net alex --batch-size N` runs
             (plan_pairs, build_metrics, score_pairs): every image decoded once, both metrics on
             batches of N pairs, decoding in loader workers; the models are built once, outside
             the clock, as for the loop (one row per --batch-size value)
  loop       one pair at a time: PIL opens both files, numpy -> torch, piq.ssim on luma
             (0.299 R + 0.587 G + 0.114 B, piq's defaults: 11x11 Gaussian, sigma 1.5, its own
             downsampling, which for 512x384 is the reference's) and lpips.LPIPS(net="alex")
  iqa-cli    (with --cli) the whole command in a fresh process: Python start-up, imports, model
             loading, scoring and writing the CSV; one run per round

The loop runs in the benchmark's process, so it also gets the heap setting iqa's loader applies
there (engine.retain_freed_host_memory); a user's own script would not, so if anything this favours
the loop. The scores of every method must agree (1e-4) before any rate is printed. The LPIPS backbone is
what torchvision's cache holds ($TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth, i.e. the real
ImageNet weights) when it is there; otherwise random AlexNet weights are written under that file
name in a private TORCH_HOME, so both sides load the same weights through their usual paths.
Speed does not depend on the weights' values; the output says which were used.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PHOTOS = ("astronaut", "coffee", "rocket", "chelsea", "immunohistochemistry", "hubble_deep_field", "retina",
          "camera")
# quick KADID types (the content of the pairs matters little for speed), levels 1..5
DISTORTIONS = ("gaussian-blur", "jpeg", "white-noise", "brighten", "darken", "colour-saturation-1", "pixelate",
               "high-sharpen", "contrast-change", "jpeg2000")
HEIGHT, WIDTH = 384, 512


def _source_images() -> list[np.ndarray]:
    """scikit-image photographs as uint8 RGB, scaled so that the short side is at least 512."""
    from PIL import Image
    from skimage import data

    out = []
    for name in PHOTOS:
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        pil = Image.fromarray(np.ascontiguousarray(img[..., :3]))
        scale = 512 / min(pil.size)
        if scale > 1 or scale < 0.5:  # small photos up, huge ones (retina) down
            pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.BICUBIC)
        out.append(np.asarray(pil))
    return out


def make_pairs(root: Path, n_pairs: int, seed: int = 0) -> tuple[Path, Path]:
    """REF/NNNN.png and DIST/NNNN.png: random 512x384 crops and one distortion each (kept if present)."""
    from PIL import Image

    from iqa_cli.distortions import distort

    ref_dir, dist_dir = root / "ref", root / "dist"
    names = [f"{i:04d}.png" for i in range(n_pairs)]
    if all((ref_dir / n).is_file() and (dist_dir / n).is_file() for n in names):
        return ref_dir, dist_dir
    ref_dir.mkdir(parents=True, exist_ok=True)
    dist_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = _source_images()
    for name in names:
        src = sources[rng.integers(len(sources))]
        y, x = rng.integers(src.shape[0] - HEIGHT + 1), rng.integers(src.shape[1] - WIDTH + 1)
        crop = src[y:y + HEIGHT, x:x + WIDTH]
        dist = distort(crop.astype(np.float64) / 255.0, str(rng.choice(DISTORTIONS)), int(rng.integers(1, 6)),
                       int(rng.integers(2 ** 31)))
        Image.fromarray(crop).save(ref_dir / name)
        Image.fromarray(np.round(dist * 255.0).astype(np.uint8)).save(dist_dir / name)
    return ref_dir, dist_dir


def prepare_backbone_weights(torch_home: Path) -> str:
    """Real ImageNet AlexNet from torchvision's cache when present; else random weights cached under its
    file name in a private TORCH_HOME (read by both iqa and the lpips package). Returns which."""
    from bench_weights import write_random_torchvision_files
    from iqa_cli.models.backbones import BACKBONES
    from iqa_cli.weights import torchvision_cache_file

    cached = torchvision_cache_file(BACKBONES["alex"])
    if cached.is_file():
        return f"ImageNet (cached {cached})"
    os.environ["TORCH_HOME"] = str(torch_home)
    write_random_torchvision_files(["alexnet"])
    return "random (no cached ImageNet AlexNet; the same random weights on both sides)"


def run_iqa(ref_dir: Path, dist_dir: Path, metrics, batch_size: int, device: str) -> dict[str, np.ndarray]:
    from iqa_cli.pairs import plan_pairs, score_pairs

    plan = plan_pairs(ref_dir, dist_dir)
    results = score_pairs(plan, metrics, batch_size=batch_size, device=device)
    return {m.name: np.array([r.scores[m.name] for r in results]) for m in metrics}


def run_loop(ref_dir: Path, dist_dir: Path, lpips_model, device) -> dict[str, np.ndarray]:
    """The per-file loop: open, convert, score with the libraries, one pair at a time."""
    import piq
    import torch
    from PIL import Image

    weights = torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)
    ssim, lp = [], []
    with torch.no_grad():
        for ref_path in sorted(ref_dir.glob("*.png")):
            tensors = []
            for path in (ref_path, dist_dir / ref_path.name):
                arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
                tensors.append(torch.from_numpy(arr).permute(2, 0, 1)[None].to(device))
            x, y = tensors
            ssim.append(piq.ssim((x * weights).sum(1, keepdim=True), (y * weights).sum(1, keepdim=True),
                                 data_range=1.0).item())
            lp.append(lpips_model(x, y, normalize=True).item())  # normalize: [0, 1] -> [-1, 1]
    return {"ssim": np.array(ssim), "lpips": np.array(lp)}


def run_cli(ref_dir: Path, dist_dir: Path, out_csv: Path, batch_size: int, device: str) -> dict[str, np.ndarray]:
    cmd = [sys.executable, "-m", "iqa_cli", "score-pair", str(ref_dir), str(dist_dir), "-m", "ssim", "-m", "lpips",
           "--net", "alex", "--device", device, "--batch-size", str(batch_size), "--out", str(out_csv)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import pandas as pd

    table = pd.read_csv(out_csv)
    return {"ssim": table["ssim"].to_numpy(), "lpips": table["lpips"].to_numpy()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[32],
                    help="iqa's pairs per forward pass (32 is score-pair's default); several give one iqa row each")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    ap.add_argument("--cli", action="store_true", help="also time the whole command in a fresh process")
    ap.add_argument("--data", type=Path, help="keep the generated pairs here and reuse them (default: a temp folder)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights_note = prepare_backbone_weights(tmp / "torch_home")
        import lpips
        import torch

        from iqa_cli.cli.common import build_metrics
        from iqa_cli.engine import resolve_device

        device = resolve_device(args.device)
        t0 = time.perf_counter()
        ref_dir, dist_dir = make_pairs(args.data or tmp / "pairs", args.pairs)
        print(f"{args.pairs} pairs of {WIDTH}x{HEIGHT} PNG in {ref_dir.parent} ({time.perf_counter() - t0:.0f} s); "
              f"device {device}; torch threads {torch.get_num_threads()}; alex backbone: {weights_note}", flush=True)
        metrics = build_metrics(["ssim", "lpips"], kind="fr", net="alex", device=str(device))
        with contextlib.redirect_stdout(io.StringIO()):  # lpips announces itself; torchvision warns on stderr
            lpips_model = lpips.LPIPS(net="alex", version="0.1", verbose=False).to(device).eval()

        iqa_names = [f"iqa b{b}" for b in args.batch_size]
        methods = {name: (lambda b=b: run_iqa(ref_dir, dist_dir, metrics, b, str(device)))
                   for name, b in zip(iqa_names, args.batch_size)}
        methods["loop"] = lambda: run_loop(ref_dir, dist_dir, lpips_model, device)
        if args.cli:
            methods["iqa-cli"] = lambda: run_cli(ref_dir, dist_dir, tmp / "scores.csv", args.batch_size[0],
                                                 str(device))
        outputs = {name: fn() for name, fn in methods.items()}  # warm-up: file cache, kernels, allocator
        for name in outputs:  # the methods must agree before their speeds mean anything
            for metric in ("ssim", "lpips"):
                diff = float(np.max(np.abs(outputs[name][metric] - outputs[iqa_names[0]][metric])))
                assert diff < 1e-4, f"{name} {metric} disagrees with {iqa_names[0]} by {diff}"
        rates: dict[str, list[float]] = {k: [] for k in methods}
        for r in range(args.repeats):
            for name, fn in methods.items():
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                rates[name].append(args.pairs / (time.perf_counter() - start))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()) + " pairs/s",
                  flush=True)

    med = {k: statistics.median(v) for k, v in rates.items()}

    def paired(a: str, b: str) -> float:
        """Median over rounds of a's rate / b's rate in the same round (cancels load drift)."""
        return statistics.median(x / y for x, y in zip(rates[a], rates[b]))

    result = {"pairs": args.pairs, "size": f"{WIDTH}x{HEIGHT}", "metrics": ["ssim", "lpips (alex, v0.1)"],
              "device": str(device), "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
              "backbone_weights": weights_note, "repeats": args.repeats, "median_pairs_per_s": med,
              "iqa_over_loop": {n: med[n] / med["loop"] for n in iqa_names},
              "paired_iqa_over_loop": {n: paired(n, "loop") for n in iqa_names},
              **({"iqa_cli_over_loop": med["iqa-cli"] / med["loop"]} if "iqa-cli" in med else {}),
              "rates_per_round": rates}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
