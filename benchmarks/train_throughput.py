"""Training speed of every `iqa train` method: optimiser steps/s, items/s, peak memory, wall time.

    python benchmarks/train_throughput.py                      # CPU, tiny sizes: a few minutes on 2 cores
    python benchmarks/train_throughput.py --methods mos asna --epochs 4 --threads 2 --json cpu.json
    python benchmarks/train_throughput.py --device cuda --scale 4 --steps 10 --crop 224 --image-side 288 \\
        --npatches 150 --versions 9 --fragment-grid 7 --fragment-piece 32 --sorter-preset original --json cuda.json

What it does, for each method of `iqa train --method` (cli/train_methods.py METHODS):

1. builds tiny synthetic inputs once, under --workdir (default: a temporary folder, removed after):
   a patch store cut by `iqa patchify` from tests/mesh_fixtures.py renders (mos); a BAPPS tree from
   tests/bapps_fixtures.py (bapps); `iqa distort` output of scikit-image photographs
   (tests/db_fixtures.py, graphiqa-pretrain and grepq-low); the same kind of folder with a planted
   MOS in KADID-10k's layout (graphiqa, asna, grepq-ridge); pristine photographs (grepq-high).
   Weights are random (speed does not depend on their values) and nothing is downloaded:
   IQA_OFFLINE=1, a private TORCH_HOME holding random torchvision files (benchmarks/bench_weights.py:
   the --net backbone and ResNet-50 for GraphIQA), a random open_clip RN50 file and a random GRepQ
   low-level encoder;
2. runs `python -m iqa_cli train --method M ... --device DEV --json` in a fresh child process for
   --epochs epochs, evaluating only before the first epoch and after the last;
3. reads the run's metrics.csv: the loop times each epoch's steps (loading, forward, backward,
   optimiser; not the evaluation or the checkpoint). Reported: the median over the epochs after
   the first of ``steps_per_s`` and ``units_per_s`` (the first epoch holds the warm-up: allocator,
   cuDNN autotuning, first reads of the caches), the steps per epoch and what a unit is; the
   child's peak resident memory (os.wait4's ru_maxrss of that child alone, so each method's figure
   is its own; DataLoader workers, where there are any, are separate processes and not added);
   on CUDA the largest ``cuda_peak_mib`` of the epochs (torch.cuda.max_memory_allocated); and the
   child's wall time (start-up, data checks, caching, evaluation and checkpoints included). The
   JSON also keeps every epoch's figures and the machine's 1-minute load average before and after
   each run (on a shared machine, other work slows every figure).

grepq-ridge is a one-shot fit, not a loop: its row gives the fit's own seconds (features of every
image, the cross-validated ridge fits, the saved model) and images/s, no steps/s.

Batch sizes are per method (scaled by --scale) and each input is sized for about --steps steps per
epoch; the table says how many steps each epoch really held. Prints a table and one JSON document
(also written to --json).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# this checkout's iqa_cli (the one the children run) and the fixture builders shared with the tests;
# both imported where used
sys.path[:0] = [str(REPO), str(REPO / "tests")]
# iqa distort types and levels: 9 distorted versions of each content of the unscored folder, 4 of
# each scored one (a smaller scored database keeps the graphiqa, asna and grepq-ridge runs short)
TYPES, LEVELS = (1, 10, 11), (1, 3, 5)
SCORED_TYPES, SCORED_LEVELS = (1, 11), (1, 5)
# items per optimiser step at --scale 1 (grepq-ridge: images per feature batch)
BASE_BATCH = {"mos": 4, "bapps": 8, "graphiqa-pretrain": 4, "graphiqa": 4, "grepq-low": 4, "grepq-high": 4,
              "grepq-ridge": 8, "asna": 4, "sorter": 256}


def recipe_units() -> dict[str, str]:
    """What one item of each method is (the recipes' own ``unit``)."""
    from iqa_cli.training.asna import AsnaRecipe
    from iqa_cli.training.bapps import BAPPSRecipe
    from iqa_cli.training.graphiqa import GraphIQAFinetuneRecipe, GraphIQAPretrainRecipe
    from iqa_cli.training.grepq_high import HighLevelRecipe
    from iqa_cli.training.grepq_low import LowLevelRecipe
    from iqa_cli.training.mos import MOSRecipe
    from iqa_cli.training.sorter import SorterRecipe

    return {"mos": MOSRecipe.unit, "bapps": BAPPSRecipe.unit, "graphiqa-pretrain": GraphIQAPretrainRecipe.unit,
            "graphiqa": GraphIQAFinetuneRecipe.unit, "grepq-low": LowLevelRecipe.unit,
            "grepq-high": HighLevelRecipe.unit, "grepq-ridge": "images", "asna": AsnaRecipe.unit,
            "sorter": SorterRecipe.unit}


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sizes:
    """Per-method batch sizes (--scale times a small base) and what the inputs must hold."""

    scale: int
    steps: int

    def batch(self, method: str) -> int:
        return BASE_BATCH[method] * self.scale

    def items(self, method: str) -> int:
        return self.batch(method) * self.steps


class Inputs:
    """Each input built on first use, once, under ``root``."""

    def __init__(self, root: Path, args, sizes: Sizes):
        self.root, self.args, self.sizes = root, args, sizes
        self._made: dict[str, object] = {}

    def get(self, key: str):
        if key not in self._made:
            tic = time.perf_counter()
            self._made[key] = getattr(self, f"_{key}")()
            print(f"  built {key} in {time.perf_counter() - tic:.1f} s", file=sys.stderr)
        return self._made[key]

    def _photos(self, folder: Path, n: int) -> list[Path]:
        from db_fixtures import photo, save

        side = self.args.image_side
        return [save(folder / f"c{i:03d}.png", photo(i, (side, side * 4 // 3))) for i in range(n)]

    def _store(self) -> Path:
        """mos: renders of ceil(stimuli / 4) models, 4 stimuli each, 64x64 patches; 80% trained on."""
        from mesh_fixtures import make_render_db

        from iqa_cli.datasets.mesh_db import patchify
        from iqa_cli.io.patches import PatchSpec

        stimuli = math.ceil(self.sizes.items("mos") / 0.8) + 1
        renders, db = make_render_db(self.root / "mesh", n_models=math.ceil(stimuli / 4), n_stimuli_per_model=4,
                                     size=(self.args.render_side, self.args.render_side))
        store = self.root / "mesh" / "store.h5"
        patchify(renders, db, store, PatchSpec(size=64, stride=64, min_foreground=0.6))
        return store

    def _bapps(self) -> Path:
        from bapps_fixtures import make_bapps_tree

        n = self.sizes.items("bapps")
        return make_bapps_tree(self.root / "bapps", {"2afc": ["train/traditional", "val/traditional"]},
                               n={"2afc/train/traditional": n, "2afc/val/traditional": 8})

    def _distorted(self) -> Path:
        """iqa distort output: one content per grepq-low item (9 versions each), no scores."""
        from iqa_cli.distort_db import distort_images

        n = max(self.sizes.items("grepq-low"), 4)
        photos = self._photos(self.root / "photos", n)
        distort_images(photos, self.root / "distorted", types=list(TYPES), levels=list(LEVELS), seed=0)
        return self.root / "distorted"

    def _scored(self) -> Path:
        """KADID-10k layout with a MOS falling with the level (and type): about --steps steps of
        the graphiqa and asna batches in the 72% of contents they train on (0.8, less 10% val)."""
        from db_fixtures import plant_kadid_mos
        from iqa_cli.distort_db import distort_images

        per_content = len(SCORED_TYPES) * len(SCORED_LEVELS)
        batch = max(self.sizes.batch("graphiqa"), self.sizes.batch("asna"))
        n = max(5, math.ceil(batch * self.sizes.steps / (0.72 * per_content)))
        photos = self._photos(self.root / "scored_photos", n)
        out = self.root / "scored"
        distort_images(photos, out, types=list(SCORED_TYPES), levels=list(SCORED_LEVELS), seed=1)
        return plant_kadid_mos(out, lambda row: 4.6 - (0.5 + 0.1 * SCORED_TYPES.index(int(row["type"])))
                               * (int(row["level"]) - 1))

    def _pristine(self) -> Path:
        self._photos(self.root / "pristine", self.sizes.items("grepq-high"))
        return self.root / "pristine"

    def _clip(self) -> Path | None:
        """A random open_clip RN50 file; None without open_clip."""
        from bench_weights import write_random_clip

        try:
            return write_random_clip(self.root / "weights" / "clip_rn50_random.pt")
        except ImportError:
            return None

    def _low_level(self) -> Path:
        from bench_weights import write_random_low_level

        return write_random_low_level(self.root / "weights" / "grepq_low_random.pth")


def write_fake_torch_home(torch_home: Path, net: str) -> None:
    """Random torchvision files (benchmarks/bench_weights.py) for the LPIPS backbone ``net`` (mos,
    bapps) and ResNet-50 (GraphIQA), in a private TORCH_HOME this process points to as well."""
    from bench_weights import write_random_torchvision_files
    from iqa_cli.models.backbones import BACKBONES
    from iqa_cli.registry import canonical_net

    os.environ["TORCH_HOME"] = str(torch_home)
    write_random_torchvision_files([BACKBONES[canonical_net(net)].torchvision_builder, "resnet50"])


# ---------------------------------------------------------------------------------------------
# one method
# ---------------------------------------------------------------------------------------------

def method_args(method: str, inputs: Inputs, args, sizes: Sizes, run_dir: Path) -> list[str] | str:
    """The `iqa train` arguments of one method (after --method M), or why it cannot run here."""
    e, b, steps = str(args.epochs), str(sizes.batch(method)), sizes.steps
    once = str(args.epochs + 1)  # --testset_freq: evaluate before the first epoch and after the last only
    cache = ["--cache", str(run_dir / "images.h5")]
    crop = str(args.crop)
    if method == "mos":
        return [str(inputs.get("store")), "--nInputImg", b, "--npatches", str(args.npatches), "--nepoch", e,
                "--nepoch_decay", "0", "--testset_freq", once, "--split", "0.8", "--net", args.net]
    if method == "bapps":
        return ["--bapps", str(inputs.get("bapps")), "--datasets", "train/traditional", "--net", args.net,
                "--head", "lpips", "--batch-size", b, "--nepoch", e, "--nepoch_decay", "0", "--testset_freq", once]
    if method == "graphiqa-pretrain":
        return [str(inputs.get("distorted")), "--batch-size", b, "--steps", str(steps), "--nepoch", e,
                "--crop-size", crop, "--eval-triplets", "4", "--testset_freq", once, *cache]
    if method == "graphiqa":
        return [str(inputs.get("scored")), "--batch-size", b, "--crops", str(args.graphiqa_crops), "--nepoch", e,
                "--crop-size", crop, "--testset_freq", once, *cache]
    if method == "grepq-low":
        return [str(inputs.get("distorted")), "--batch-size", b, "--nepoch", e, "--versions", str(args.versions),
                "--fragment-grid", str(args.fragment_grid), "--fragment-piece", str(args.fragment_piece), *cache,
                "--fsim-cache", str(run_dir / "fsim.h5")]
    if method == "grepq-high":
        clip = inputs.get("clip")
        if clip is None:
            return "open_clip is not installed (pip install open_clip_torch): no RN50 to fine-tune"
        return [str(inputs.get("pristine")), "--clip-weights", str(clip), "--batch-size", b, "--group-size",
                str(2 * sizes.scale), "--nepoch", e, "--crop", crop]
    if method == "grepq-ridge":
        clip = inputs.get("clip")
        extra = ["--clip-weights", str(clip)] if clip is not None else []
        return [str(inputs.get("scored")), "--low-level-weights", str(inputs.get("low_level")), *extra,
                "--batch-size", b, "--repeats", "3", "--folds", "3", *cache,
                "--feature-cache", str(run_dir / "features.h5")]
    if method == "asna":
        return [str(inputs.get("scored")), "--size", crop, "--batch-size", b, "--nepoch", e, "--testset_freq",
                once, *cache]
    if method == "sorter":
        return ["--preset", args.sorter_preset, "--vectors", str(sizes.items("sorter")), "--batch-size", b,
                "--nepoch", e, "--testset_freq", once]
    raise ValueError(f"no benchmark settings for --method {method}")


def max_rss_mib(rusage) -> float:
    """ru_maxrss is in KiB on Linux, in bytes on macOS."""
    return rusage.ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)


def run_child(cmd: list[str], env: dict, log: Path) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS MiB) of one child process, waited for with os.wait4 so
    the resource figures are this child's alone."""
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        tic = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=REPO)
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - tic
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return proc.returncode, wall, max_rss_mib(rusage)


def median_after_first(rows: list[dict], key: str) -> float | None:
    values = [float(r[key]) for r in rows[1:] if r.get(key)]
    return statistics.median(values) if values else None


def measure(method: str, inputs: Inputs, args, sizes: Sizes, work: Path, base_env: dict, unit: str) -> dict:
    run_dir = work / "runs" / method
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    built = method_args(method, inputs, args, sizes, run_dir)
    result: dict = {"method": method, "unit": unit, "batch": sizes.batch(method)}
    if isinstance(built, str):
        return {**result, "skipped": built}
    cmd = [sys.executable, "-m", "iqa_cli", "train", *built, "--method", method, "--name", "run",
           "--checkpoints-dir", str(run_dir), "--device", args.device, "--seed", "0", "--json"]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    # a private cache folder: no method finds another's image or feature caches already built
    env = {**base_env, "IQA_CACHE_DIR": str(run_dir / "cache")}
    load_before = os.getloadavg()[0]
    code, wall, rss = run_child(cmd, env, run_dir / "child")
    # the 1-minute load average around the run: other work on the machine slows every figure
    result.update(command=" ".join(cmd), exit_code=code, wall_s=round(wall, 2), peak_rss_mib=round(rss, 1),
                  load_avg=[round(load_before, 2), round(os.getloadavg()[0], 2)])
    if code != 0:
        err = (run_dir / "child.err").read_text(errors="replace").strip().splitlines()
        return {**result, "error": " | ".join(err[-3:])}
    doc = json.loads((run_dir / "child.out").read_text())
    if method == "grepq-ridge":
        seconds = float(doc["seconds"])
        return {**result, "fit_s": round(seconds, 2), "n_images": doc["n_scored"], "feature_dim": doc["dim"],
                "mode": doc["mode"], "units_per_s": doc["n_scored"] / seconds}
    with open(Path(doc["metrics_csv"]), newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["epoch"] != "0"]
    if len(rows) < 2:
        return {**result, "error": f"{len(rows)} trained epoch(s) in metrics.csv: need 2 or more"}
    steps = [round(float(r["steps_per_s"]) * float(r["seconds"])) for r in rows]
    cuda = [float(r["cuda_peak_mib"]) for r in rows if r.get("cuda_peak_mib")]
    result.update(
        n_train=doc.get("n_train"), steps_per_epoch=steps[0] if len(set(steps)) == 1 else steps,
        steps_per_s=median_after_first(rows, "steps_per_s"), units_per_s=median_after_first(rows, "units_per_s"),
        epoch_s=median_after_first(rows, "seconds"), cuda_peak_mib=max(cuda) if cuda else None,
        train_s=round(float(doc["seconds"]), 2),
        per_epoch={k: [float(r[k]) if r.get(k) else None for r in rows]
                   for k in ("seconds", "steps_per_s", "units_per_s", "cuda_peak_mib") if k in rows[0]})
    return result


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[dict], device: str) -> None:
    from rich.console import Console
    from rich.table import Table

    cuda = device.startswith("cuda")
    table = Table(title=f"iqa train speed on {device} (median of the epochs after the first)")
    columns = ["method", "unit", "batch", "steps/epoch", "steps/s", "units/s", "s/epoch", "peak RSS MiB"]
    columns += ["peak CUDA MiB"] if cuda else []
    columns += ["wall s"]
    for c in columns:
        table.add_column(c, justify="left" if c in ("method", "unit") else "right")
    for r in results:
        if "skipped" in r or "error" in r:
            why = r.get("skipped") or f"failed (exit {r.get('exit_code')}): {r['error']}"
            table.add_row(r["method"], r["unit"], str(r["batch"]), f"[yellow]{why}[/]", *[""] * (len(columns) - 4))
            continue
        if r["method"] == "grepq-ridge":
            cells = [f"{r['n_images']} images, {r['mode']}", f"fit {r['fit_s']:.1f} s", fmt(r["units_per_s"], ".1f"),
                     "-"]
        else:
            steps = r["steps_per_epoch"]
            cells = [str(steps) if isinstance(steps, int) else "/".join(map(str, steps)), fmt(r["steps_per_s"], ".3g"),
                     fmt(r["units_per_s"], ".4g"), fmt(r["epoch_s"], ".2f")]
        row = [r["method"], r["unit"], str(r["batch"]), *cells, fmt(r["peak_rss_mib"], ".0f")]
        row += [fmt(r.get("cuda_peak_mib"), ".0f")] if cuda else []
        row += [fmt(r["wall_s"], ".1f")]
        table.add_row(*row)
    Console(width=max(Console().width, 150)).print(table)


def main() -> None:
    from iqa_cli.cli.train_methods import METHODS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD",
                    help=f"default: all ({' '.join(METHODS)})")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:K")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per method (>= 2; the first is warm-up)")
    ap.add_argument("--threads", type=int, default=0, help="CPU intra-op threads of each child (0: torch's default)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: iqa train's, by device)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="build inputs and keep run folders here (default: a temporary folder, removed after)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--scale", type=int, default=1, help="multiplies every method's batch size (and its inputs)")
    ap.add_argument("--steps", type=int, default=3, help="about this many optimiser steps per epoch")
    ap.add_argument("--crop", type=int, default=64,
                    help="graphiqa crop size, grepq-high crop, asna input size (224 / 224 / 288 as published)")
    ap.add_argument("--image-side", type=int, default=96, help="shorter side of the photographs (4:3)")
    ap.add_argument("--render-side", type=int, default=192, help="mos: side of the square renders (64x64 patches)")
    ap.add_argument("--npatches", type=int, default=16, help="mos: patches per stimulus (published 150)")
    ap.add_argument("--graphiqa-crops", type=int, default=3, help="graphiqa: crops per image (published 25)")
    ap.add_argument("--versions", type=int, default=3,
                    help=f"grepq-low: images per content, at most {len(TYPES) * len(LEVELS) + 1} (published 9)")
    ap.add_argument("--fragment-grid", type=int, default=4, help="grepq-low: fragment grid (published 7)")
    ap.add_argument("--fragment-piece", type=int, default=16, help="grepq-low: fragment piece (published 32)")
    ap.add_argument("--sorter-preset", default="small", choices=("small", "original"))
    ap.add_argument("--net", default="alex", help="mos, bapps: backbone")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be 2 or more: the first epoch is warm-up and is left out of the medians")
    if args.scale < 1 or args.steps < 1 or args.crop < 32 or args.crop % 8:
        ap.error("--scale and --steps must be >= 1, --crop >= 32 and a multiple of 8")
    unknown = sorted(set(METHODS) - set(BASE_BATCH))
    if unknown:  # a method added to iqa train needs its inputs and options here
        ap.error(f"no benchmark settings for --method {', '.join(unknown)}: add them to BASE_BATCH and method_args")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="iqa_train_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    for sub in ("data", "runs", "torch_home"):
        shutil.rmtree(work / sub, ignore_errors=True)
    tic = time.perf_counter()
    try:
        os.environ["IQA_OFFLINE"] = "1"
        write_fake_torch_home(work / "torch_home", args.net)
        env = {**os.environ, "IQA_OFFLINE": "1", "TORCH_HOME": str(work / "torch_home"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        if args.threads:
            env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        sizes = Sizes(args.scale, args.steps)
        inputs = Inputs(work / "data", args, sizes)
        units = recipe_units()
        results = []
        for method in args.methods:
            print(f"{method}: building inputs and training {args.epochs} epochs ...", file=sys.stderr)
            results.append(measure(method, inputs, args, sizes, work, env, units[method]))
            r = results[-1]
            print(f"{method}: " + (r.get("skipped") or r.get("error") or
                                   f"{fmt(r.get('steps_per_s'), '.3g')} steps/s, {fmt(r['units_per_s'], '.4g')} "
                                   f"{r['unit']}/s, peak RSS {r['peak_rss_mib']:.0f} MiB, wall {r['wall_s']:.1f} s"),
                  file=sys.stderr)
        import torch

        report = {"device": args.device, "cpus": os.cpu_count(),
                  "threads": args.threads or torch.get_num_threads(), "torch": torch.__version__,
                  "epochs": args.epochs, "scale": args.scale, "steps": args.steps, "crop": args.crop,
                  "image_side": args.image_side, "medians": "over the epochs after the first (warm-up)",
                  "seconds": round(time.perf_counter() - tic, 1), "results": results}
        if args.device.startswith("cuda") and torch.cuda.is_available():
            report["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
        print_table(results, args.device)
        print(json.dumps(report, indent=1))
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if any("error" in r for r in results) else 0)


if __name__ == "__main__":
    main()
