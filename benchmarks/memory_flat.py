"""Peak memory of `iqa score-mesh-db` as the store grows: it must stay flat.

    python benchmarks/memory_flat.py                  # ~4.3 GB store (and a 10x smaller one)
    python benchmarks/memory_flat.py --gigabytes 1    # quicker look

Writes synthetic stores straight through the store writer (random 64x64 patches, 100 per
stimulus, 70 stimuli per model), runs the real command on each in a child process, and reports
the child's peak resident set size (ru_maxrss) and patches/s. Needs free disk of about the store
size in the temporary folder (``--tmp`` to choose it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PATCH_BYTES = 64 * 64 * 3
PATCHES_PER_STIMULUS = 100
STIMULI_PER_MODEL = 70


def write_store(path: Path, gigabytes: float, seed: int = 0) -> int:
    from iqa_cli.io.store import StoreWriter

    rng = np.random.default_rng(seed)
    n_stimuli = int(gigabytes * 2**30 / (PATCH_BYTES * PATCHES_PER_STIMULUS)) + 1
    n_models = -(-n_stimuli // STIMULI_PER_MODEL)
    zeros = np.zeros(PATCHES_PER_STIMULUS, dtype=np.int64)
    numbers = np.arange(PATCHES_PER_STIMULUS)
    written = 0
    with StoreWriter(path, patch_size=64, stride=64, min_foreground=0.6, background="auto",
                     fingerprint=f"benchmark-{gigabytes}", source="renders") as w:
        for m in range(n_models):
            ref = rng.integers(0, 256, (PATCHES_PER_STIMULUS, 64, 64, 3), dtype=np.uint8)
            model = w.add_model(f"m{m}", ref)
            for j in range(min(STIMULI_PER_MODEL, n_stimuli - written)):
                noise = rng.integers(-20, 21, ref.shape, dtype=np.int16)
                dist = np.clip(ref.astype(np.int16) + noise, 0, 255).astype(np.uint8)
                w.add_stimulus(model, f"m{m}_s{j}", dist, view=zeros, number=numbers, y=zeros - 1, x=zeros - 1,
                               ref=numbers, mos=float(rng.uniform()))
                written += 1
        w.commit()
    return written * PATCHES_PER_STIMULUS


def score(path: Path, env: dict) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of `iqa score-mesh-db` on the store, in a fresh child process."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-m", "iqa_cli", "score-mesh-db", str(path), "--backbone-weights",
                    env["IQA_BENCH_WEIGHTS"], "--json"], check=True, stdout=subprocess.DEVNULL, env=env)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak < before:
        raise RuntimeError("ru_maxrss went down: run each size in its own benchmark process")
    return peak / 1024, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gigabytes", type=float, default=4.3)
    ap.add_argument("--tmp", type=Path, default=None)
    ap.add_argument("--small-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    from iqa_cli.models.backbones import BACKBONES, torchvision_features

    results = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        weights = Path(tmp) / "alex_random.pth"  # memory does not depend on the weights' values
        torch.save({f"features.{k}": v for k, v in torchvision_features(BACKBONES["alex"]).state_dict().items()},
                   weights)
        env = {**os.environ, "IQA_BENCH_WEIGHTS": str(weights)}
        # ru_maxrss of children is a running maximum: measure the small store first.
        for label, gb in (("small", args.gigabytes / 10), ("large", args.gigabytes)):
            path = Path(tmp) / f"{label}.h5"
            n = write_store(path, gb)
            size = path.stat().st_size / 2**30
            rss, seconds = score(path, env)
            results[label] = {"store_gib": round(size, 2), "patches": n, "peak_rss_mib": round(rss),
                              "patches_per_s": round(n / seconds)}
            print(f"{label}: store {size:.2f} GiB, {n} patches -> peak RSS {rss:.0f} MiB, {n / seconds:,.0f} "
                  f"patches/s", flush=True)
            path.unlink()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
