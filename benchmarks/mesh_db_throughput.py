"""Patches/s of `iqa score-mesh-db` against the loops it replaces, measured side by side.

    python benchmarks/mesh_db_throughput.py                 # CPU, alex, synthetic renders
    python benchmarks/mesh_db_throughput.py --device cuda --models 8 --stimuli 10
    python benchmarks/mesh_db_throughput.py --device cuda --synthetic-gb 2 --skip-loop \
        --precision fp32 tf32 bf16 fp16 --batch-size 2048                 # ~175,000 patches

``--synthetic-gb`` skips the renders (about 0.7 s of CPU per 1024x1024 stimulus) and writes random
patches straight through the store writer, as benchmarks/memory_flat.py does: 100 reference
patches per model, 70 stimuli per model. Speed does not depend on what the patches show.

On one synthetic database (renders made by tests/mesh_fixtures.py, cut by `iqa patchify`) it
times, in interleaved rounds so machine noise hits every method alike:

  iqa        score_mesh_db on the HDF5 store (what `iqa score-mesh-db` runs)
  loop       the original release's loop: one patch pair per forward pass, each patch read
             from its PNG file (reference `lpips` package)
  lpips-stim the reference `lpips` package on whole-stimulus batches read from the same store
  ceiling    the backbone alone on the same distorted patches, already in the device's memory (no
             reading, no copies, no distance): what end-to-end scoring could reach at best

and reports the median patches/s of each and the ratios. ``--precision fp32 bf16 fp16`` times iqa
and the ceiling at each precision side by side (the half precisions' scores are checked against
fp32 within LPIPS's stated tolerance, tests/test_precision.py); the loops run in fp32. Speed does not depend on the weights'
values, so without cached ImageNet weights the backbone is random (the same in every method).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the synthetic render generator shared with the tests
sys.path.insert(0, str(REPO / "benchmarks"))

from mesh_fixtures import make_render_db  # noqa: E402
from memory_flat import write_store  # noqa: E402

from iqa_cli import create_metric  # noqa: E402
from iqa_cli.datasets.mesh_db import patchify  # noqa: E402
from iqa_cli.engine import autocast, default_batch_size, resolve_device, to_device  # noqa: E402
from iqa_cli.io.patches import PatchSpec  # noqa: E402
from iqa_cli.io.store import PatchStore  # noqa: E402
from iqa_cli.score_db import score_mesh_db  # noqa: E402


def build_database(root: Path, models: int, stimuli: int, size: int) -> Path:
    renders, db = make_render_db(root, n_models=models, n_stimuli_per_model=stimuli, size=(size, size))
    store = root / "store.h5"
    patchify(renders, db, store, PatchSpec(size=64, stride=64, min_foreground=0.6))
    return store


def export_patch_pngs(store: PatchStore, folder: Path) -> None:
    """The published layout the original loop reads: one PNG per patch."""
    folder.mkdir(parents=True, exist_ok=True)
    for row in store.stimuli.itertuples():
        dist = store.read_distorted(row.first, row.first + row.count)
        refs = store.read_reference_rows(np.unique(store.patch_refs(row.first, row.first + row.count)))
        for p in range(row.count):
            Image.fromarray(dist[p]).save(folder / f"{row.stimulus}_P{p + 1}.png")
            Image.fromarray(refs[p]).save(folder / f"{row.stimulus}_Ref_P{p + 1}.png")


def to_lpips_input(patch: np.ndarray, device) -> torch.Tensor:
    return (torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1)[None].float() / 127.5 - 1).to(device)


def run_loop(store: PatchStore, folder: Path, model, device) -> np.ndarray:
    """Original release: each pair read from its PNGs, one forward pass per pair."""
    scores = []
    with torch.no_grad():
        for row in store.stimuli.itertuples():
            d = []
            for p in range(1, row.count + 1):
                ref = np.asarray(Image.open(folder / f"{row.stimulus}_Ref_P{p}.png").convert("RGB"))
                dist = np.asarray(Image.open(folder / f"{row.stimulus}_P{p}.png").convert("RGB"))
                d.append(min(float(model(to_lpips_input(ref, device), to_lpips_input(dist, device))), 1.0))
            scores.append(np.mean(d))
    return np.array(scores)


def run_lpips_stimulus_batches(store: PatchStore, model, device) -> np.ndarray:
    scores = []
    with torch.no_grad():
        for row in store.stimuli.itertuples():
            dist = store.read_distorted(row.first, row.first + row.count)
            refs = store.read_reference_rows(store.patch_refs(row.first, row.first + row.count))
            x0 = torch.from_numpy(refs).permute(0, 3, 1, 2).float().div(255).to(device)
            x1 = torch.from_numpy(dist).permute(0, 3, 1, 2).float().div(255).to(device)
            scores.append(model(x0, x1, normalize=True).clamp(max=1).mean().item())
    return np.array(scores)


def run_ceiling(patches: torch.Tensor, metric, batch_size: int, device, precision: str) -> None:
    """The backbone alone, set up exactly as iqa runs it (layout, batch size, precision), on
    uint8 (N, 3, H, W) patches already on ``device``."""
    with torch.inference_mode(), autocast(device, precision, metric):
        for s in range(0, len(patches), batch_size):
            metric.net(metric.backbone_input(patches[s:s + batch_size]))
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--stimuli", type=int, default=15, help="stimuli per model (the published set has ~55)")
    ap.add_argument("--size", type=int, default=512, help="render size (pixels, square)")
    ap.add_argument("--net", default="alex")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="default: iqa's choice for the net")
    ap.add_argument("--precision", nargs="+", default=["fp32"], help="one or more of fp32 tf32 fp16 bf16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--synthetic-gb", type=float, default=None,
                    help="write a store of random patches of about this size instead of rendering")
    ap.add_argument("--skip-loop", action="store_true", help="skip the slow per-pair loop (large databases)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import lpips

    device = resolve_device(args.device)
    have_imagenet = os.environ.get("IQA_BENCH_IMAGENET") == "1"
    metric = create_metric("lpips", net=args.net, backbone_weights="imagenet" if have_imagenet else "random",
                           device=device)
    reference = lpips.LPIPS(net=args.net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    reference.net.load_state_dict(metric.net.state_dict())
    reference = reference.to(device).eval()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.synthetic_gb:
            store_path = root / "store.h5"
            write_store(store_path, args.synthetic_gb)
        else:
            store_path = build_database(root, args.models, args.stimuli, args.size)
        store = PatchStore.open(store_path)
        n = store.n_patches
        if not args.skip_loop:
            export_patch_pngs(store, root / "pngs")
        # uint8 (N, 3, H, W) on the device, as the loader hands iqa's batches over
        all_patches = to_device(torch.from_numpy(store.read_distorted(0, n)).permute(0, 3, 1, 2), device)
        print(f"database: {len(store.stimuli)} stimuli, {n} patches of 64x64, {store.n_reference} reference "
              f"patches; net {args.net}; device {device}; torch threads {torch.get_num_threads()}", flush=True)

        batch = args.batch_size or default_batch_size(args.net)
        methods = {}
        for p in args.precision:
            methods[f"iqa-{p}"] = lambda p=p: np.array([s.score for s in score_mesh_db(
                store, metric, batch_size=batch, device=device, precision=p).stimuli])
            methods[f"ceiling-{p}"] = lambda p=p: run_ceiling(all_patches, metric, batch, device, p)
        methods["lpips-stim"] = lambda: run_lpips_stimulus_batches(store, reference, device)
        if not args.skip_loop:
            methods["loop"] = lambda: run_loop(store, root / "pngs", reference, device)
        for fn in methods.values():  # warm-up: allocator, oneDNN kernels, file cache
            fn()
        rates: dict[str, list[float]] = {k: [] for k in methods}
        outputs = {}
        for r in range(args.repeats):
            for name, fn in methods.items():
                seconds, outputs[name] = timed(fn)
                rates[name].append(n / seconds)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()) + " patches/s",
                  flush=True)

    # The methods must agree before their speeds mean anything: the fp32 loops with iqa exactly
    # (1e-4), iqa's other precisions with fp32 within LPIPS's stated tolerance (docs/gpu.md).
    base = outputs[f"iqa-{args.precision[0]}"]
    for name in ("lpips-stim", "loop"):
        if name in outputs:
            diff = float(np.max(np.abs(outputs[name] - base)))
            limit = 1e-4 if args.precision[0] in ("fp32", "tf32") else 1e-2
            assert diff < limit, f"{name} disagrees with iqa by {diff}"
    for p in args.precision[1:]:
        excess = np.abs(outputs[f"iqa-{p}"] - base) - (5e-3 * np.abs(base) + 1e-4)
        assert (excess <= 0).all(), f"iqa-{p} strays from iqa-{args.precision[0]} by up to {excess.max():.3g} beyond tolerance"
    med = {k: statistics.median(v) for k, v in rates.items()}

    def paired(a: str, b: str) -> float | None:
        """Median over rounds of a's rate / b's rate in the same round (cancels load drift)."""
        return statistics.median(x / y for x, y in zip(rates[a], rates[b])) if b in rates else None

    result = {"patches": n, "net": args.net, "device": str(device), "batch_size": batch, "repeats": args.repeats,
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "median_patches_per_s": med,
              "ratios": {p: {"iqa_over_loop": med[f"iqa-{p}"] / med["loop"] if "loop" in med else None,
                             "iqa_over_lpips_stimulus_batches": med[f"iqa-{p}"] / med["lpips-stim"],
                             "iqa_over_ceiling": med[f"iqa-{p}"] / med[f"ceiling-{p}"],
                             "paired_over_ceiling": paired(f"iqa-{p}", f"ceiling-{p}"),
                             "paired_over_loop": paired(f"iqa-{p}", "loop")} for p in args.precision},
              "rates_per_round": rates}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
