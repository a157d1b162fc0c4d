"""NIQE images/s: iqa's batched torch NIQE against the per-image numpy port, side by side.

    python benchmarks/niqe_throughput.py                    # CPU, 32 photographs of 512x384
    python benchmarks/niqe_throughput.py --device cuda --images 256 --batch-size 64
    python benchmarks/niqe_throughput.py --threads 1        # one torch thread (shared machines)

The photographs are scikit-image's (astronaut, chelsea, coffee, rocket, camera, motorcycle
left/right), each resized to cover 512x384 and centre-cropped, then mirrored to make more. In
interleaved rounds (machine noise hits both alike) it times

  iqa    NIQE() on batches of --batch-size images (what `iqa score-image --metric niqe` runs)
  port   BasicSR 1.4.2's basicsr/metrics/niqe.py, one image at a time (the numpy port; fetched
         from PyPI by tests/niqe_oracle.py, given the same grey image and pristine parameters)

and reports the median images/s of each, their ratio, and the largest relative difference of
the scores (the port computes its half-scale image in float32; iqa in float64 as MATLAB does).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_photos import HEIGHT, WIDTH, photographs  # beside this file (sys.path[0])

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the oracle loader shared with the tests

import niqe_oracle  # noqa: E402

from iqa_cli.engine import resolve_device  # noqa: E402
from iqa_cli.models.niqe import NIQE, official_pristine_path, to_grey  # noqa: E402


def run_iqa(metric: NIQE, images: torch.Tensor, batch_size: int, device: torch.device) -> np.ndarray:
    scores = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device, non_blocking=True).float().div_(255)
            scores.append(metric(batch).cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return torch.cat(scores).numpy()


def run_port(oracle, greys: list[np.ndarray], params: dict) -> np.ndarray:
    return np.array([oracle.niqe.niqe(g, params["mu_pris_param"], params["cov_pris_param"],
                                      params["gaussian_window"]) for g in greys])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    oracle = niqe_oracle.load()
    with np.load(str(official_pristine_path()), allow_pickle=False) as d:
        params = {k: d[k] for k in d.files}

    rgb = photographs(args.images)
    images = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()
    if device.type == "cuda":
        images = images.pin_memory()
    greys = [g.numpy() for g in to_grey(images.float() / 255)]  # the port's input: MATLAB rgb2gray
    metric = NIQE().to(device)
    print(f"{args.images} photographs {WIDTH}x{HEIGHT}; device {device}; torch threads {torch.get_num_threads()}; "
          f"batch {args.batch_size}; {args.rounds} rounds", file=sys.stderr, flush=True)

    run_iqa(metric, images[:args.batch_size], args.batch_size, device)  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {"iqa": [], "port": []}
    scores: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for name in ("iqa", "port"):
            t0 = time.perf_counter()
            scores[name] = (run_iqa(metric, images, args.batch_size, device) if name == "iqa"
                            else run_port(oracle, greys, params))
            times[name].append(time.perf_counter() - t0)
            print(f"round {r + 1} {name}: {args.images / times[name][-1]:.2f} images/s", file=sys.stderr, flush=True)

    rate = {name: args.images / statistics.median(t) for name, t in times.items()}
    rel = np.abs(scores["iqa"] - scores["port"]) / np.abs(scores["port"])
    result = {"images": args.images, "size": [HEIGHT, WIDTH], "device": str(device),
              "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size, "rounds": args.rounds,
              "images_per_s": rate, "speedup": rate["iqa"] / rate["port"],
              "max_rel_diff": float(rel.max()), "median_rel_diff": float(np.median(rel)),
              "score_range": [float(scores["iqa"].min()), float(scores["iqa"].max())]}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"iqa  (batched torch): {rate['iqa']:8.2f} images/s")
    print(f"port (numpy, 1 by 1): {rate['port']:8.2f} images/s")
    print(f"speed-up: {result['speedup']:.1f}x; scores agree to {result['max_rel_diff']:.1e} relative at worst "
          f"(median {result['median_rel_diff']:.1e}); NIQE {result['score_range'][0]:.3f} to "
          f"{result['score_range'][1]:.3f}")


if __name__ == "__main__":
    main()
