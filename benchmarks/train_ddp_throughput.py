"""Training throughput (stimuli/s) of `iqa train` on 1, 2, ... processes under torchrun.

    python benchmarks/train_ddp_throughput.py                         # CPU: 1 and 2 processes
    python benchmarks/train_ddp_throughput.py --device cuda --nproc 1 2 4 8 --stimuli 40 --size 512

On one synthetic database (renders from tests/mesh_fixtures.py, cut by `iqa patchify` into 64x64
patches) it runs `torchrun --standalone --nproc_per_node N -m iqa_cli train` for each N, in
interleaved rounds so machine noise hits every setting alike, and reads each epoch's stimuli/s from
the run's metrics.csv (the training loop alone: no start-up, no evaluation). The global batch
(--nInputImg) is the same for every N, so every setting does the same optimiser steps; it reports
the median per setting and the speed-up over the first. On the CPU each process gets
--threads-per-proc intra-op threads (torchrun's default is 1); the one-process setting is also run
with all the threads the N-process settings use together (``1x2`` etc.), the fair comparison on a
small machine. On GPUs each process drives one GPU (cuda:LOCAL_RANK).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from mesh_db_throughput import build_database  # noqa: E402  (the same synthetic database, cut into 64x64 patches)


def backbone_file(root: Path, net: str) -> Path | None:
    """Speed does not depend on the weights: without cached ImageNet weights use random ones."""
    import torch

    from iqa_cli.models.backbones import BACKBONES, torchvision_features
    from iqa_cli.weights import torchvision_cache_file

    spec = BACKBONES[net]
    if torchvision_cache_file(spec).is_file():
        return None
    path = root / f"{net}_random.pth"
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in torchvision_features(spec).state_dict().items()}, path)
    return path


def run_once(store: Path, ck: Path, nproc: int, threads: int, args, weights: Path | None) -> list[float]:
    name = f"n{nproc}t{threads}"
    shutil.rmtree(ck / name, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "iqa_cli", "train", str(store), "--name", name, "--checkpoints-dir", str(ck), "--device", args.device,
           "--net", args.net, "--nInputImg", str(args.n_input_img), "--npatches", str(args.npatches),
           "--nepoch", str(args.epochs), "--nepoch_decay", "0", "--testset_freq", str(args.epochs + 1),
           "--seed", "0", "--split", "0.8", "--workers", str(args.workers)]
    if weights is not None:
        cmd += ["--backbone-weights", str(weights)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    rows = list(csv.DictReader(open(ck / name / "metrics.csv")))
    return [float(r["units_per_s"]) for r in rows if r["units_per_s"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    ap.add_argument("--threads-per-proc", type=int, default=1, help="CPU intra-op threads per process")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process)")
    ap.add_argument("--net", default="alex")
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--stimuli", type=int, default=8, help="stimuli per model")
    ap.add_argument("--size", type=int, default=256, help="render size (pixels, square)")
    ap.add_argument("--n-input-img", type=int, default=4, help="stimuli per optimiser step (global)")
    ap.add_argument("--npatches", type=int, default=32, help="patches per stimulus per epoch")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers per process")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="iqa_ddp_bench_"))
    try:
        store = build_database(root, args.models, args.stimuli, args.size)
        weights = backbone_file(root, args.net)
        settings = [(n, args.threads_per_proc) for n in args.nproc]
        if args.device == "cpu":  # one process with the threads the largest setting uses in all
            most = max(args.nproc) * args.threads_per_proc
            if (1, most) not in settings:
                settings.insert(1, (1, most))
        rates: dict[str, list[float]] = {f"{n}x{t}": [] for n, t in settings}
        for round_ in range(args.repeats):
            for n, t in settings:
                rates[f"{n}x{t}"] += run_once(store, root / "ck", n, t, args, weights)
                print(f"round {round_ + 1}: {n} process(es) x {t} thread(s): {rates[f'{n}x{t}'][-1]:.2f} stimuli/s",
                      file=sys.stderr)
        medians = {k: statistics.median(v) for k, v in rates.items()}
        base = medians[f"{settings[0][0]}x{settings[0][1]}"]
        report = {"device": args.device, "net": args.net, "n_input_img": args.n_input_img, "npatches": args.npatches,
                  "cpus": os.cpu_count(), "median_stimuli_per_s": medians,
                  "speedup_vs_first": {k: v / base for k, v in medians.items()}, "rates_per_epoch": rates}
        print(json.dumps(report, indent=2))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
