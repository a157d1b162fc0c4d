"""Scoring image pairs: two files, two folders matched by relative path, or all pairs of one folder.

The plan (which files pair up) is built and validated before any model runs, so a typo in a
folder name costs milliseconds, not a model load.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import InvalidInputError
from .io.images import image_size, is_image_path, load_image


@dataclass(frozen=True)
class PairPlan:
    pairs: list[tuple[Path, Path]]
    unmatched_ref: list[str] = field(default_factory=list)  # relative paths only in REF
    unmatched_dist: list[str] = field(default_factory=list)  # relative paths only in DIST
    folder_mode: bool = False


def _images_under(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file() and is_image_path(p)}


def _short_list(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def plan_pairs(ref: Path, dist: Path | None = None, all_pairs: bool = False, skip_unmatched: bool = False) -> PairPlan:
    """Decide which files are compared; every problem is an InvalidInputError naming the path."""
    ref = Path(ref)
    if not ref.exists():
        raise InvalidInputError(f"{ref}: no such file or folder (check the path)")
    if all_pairs:
        if dist is not None:
            raise InvalidInputError("--all-pairs takes one folder: drop the second path")
        if not ref.is_dir():
            raise InvalidInputError(f"{ref}: --all-pairs needs a folder of images")
        files = list(_images_under(ref).values())
        if len(files) < 2:
            raise InvalidInputError(f"{ref}: --all-pairs needs at least 2 images, found {len(files)}")
        return PairPlan(list(itertools.combinations(files, 2)), folder_mode=True)
    if dist is None:
        raise InvalidInputError("missing DIST: give two images, two folders, or one folder with --all-pairs")
    dist = Path(dist)
    if not dist.exists():
        raise InvalidInputError(f"{dist}: no such file or folder (check the path)")
    if ref.is_dir() != dist.is_dir():
        raise InvalidInputError(f"{ref} and {dist}: give two files or two folders, not one of each")
    if not ref.is_dir():
        return PairPlan([(ref, dist)])
    ref_files, dist_files = _images_under(ref), _images_under(dist)
    for folder, files in ((ref, ref_files), (dist, dist_files)):
        if not files:
            raise InvalidInputError(f"{folder}: folder holds no images (expected .png/.jpg/.bmp/... files)")
    common = sorted(set(ref_files) & set(dist_files))
    only_ref = sorted(set(ref_files) - set(dist_files))
    only_dist = sorted(set(dist_files) - set(ref_files))
    if not common:
        raise InvalidInputError(f"{ref} and {dist}: no file names in common (pairs are matched by relative path)")
    if (only_ref or only_dist) and not skip_unmatched:
        parts = []
        if only_ref:
            parts.append(f"only in {ref}: {_short_list(only_ref)}")
        if only_dist:
            parts.append(f"only in {dist}: {_short_list(only_dist)}")
        raise InvalidInputError("unmatched files (pairs are matched by relative path): " + "; ".join(parts)
                                + "; add --skip-unmatched to score the matched pairs only")
    return PairPlan([(ref_files[k], dist_files[k]) for k in common], only_ref, only_dist, folder_mode=True)


def heatmap_names(plan: PairPlan, root: Path, all_pairs: bool = False) -> list[Path]:
    """Each pair's heat-map path under --spatial-dir, relative: the pair's relative path with .png
    (``sub/y.png``), or ``REF__DIST.png`` from the file stems with --all-pairs. Pairs that would
    share a name (``a.jpg`` and ``a.png``; ``x.png`` in two subfolders) keep their whole relative
    paths instead (``a.jpg.png``; ``a_x__b_x.png``), so no map overwrites another."""
    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    if all_pairs:
        short = [Path(f"{r.stem}__{d.stem}.png") for r, d in plan.pairs]
        full = [Path(f"{rel(r).replace('/', '_')}__{rel(d).replace('/', '_')}.png") for r, d in plan.pairs]
    else:
        short = [Path(rel(r)).with_suffix(".png") for r, _ in plan.pairs]
        full = [Path(rel(r) + ".png") for r, _ in plan.pairs]
    taken: dict[Path, int] = {}
    for name in short:
        taken[name] = taken.get(name, 0) + 1
    return [f if taken[s] > 1 else s for s, f in zip(short, full)]


def check_sizes(plan: PairPlan, resize: bool) -> list[tuple[int, int]]:
    """(H, W) each pair is scored at (the reference's); mismatches are errors unless resize."""
    sizes = []
    for ref, dist in plan.pairs:
        rs, ds = image_size(ref), image_size(dist)
        if rs != ds and not resize:
            raise InvalidInputError(f"{ref.name} is {rs[1]}x{rs[0]} but {dist} is {ds[1]}x{ds[0]}: images must "
                                    f"have the same size (use --resize to rescale dist)")
        sizes.append(rs)
    return sizes


@dataclass(frozen=True)
class PairScore:
    ref: Path
    dist: Path
    scores: dict[str, float]  # metric name -> score, in the order the metrics were given

    @property
    def score(self) -> float:
        """The first metric's score (the only one in a single-metric run)."""
        return next(iter(self.scores.values()))


MapSink = Callable[[Path, Path, np.ndarray], None]


def score_pairs(plan: PairPlan, metrics, batch_size: int = 32, device: str = "auto", resize: bool = False,
                on_spatial_map: MapSink | None = None, advance: Callable[[int], None] | None = None,
                sizes: list[tuple[int, int]] | None = None, precision: str = "fp32") -> list[PairScore]:
    """Scores of every planned pair under each metric, batched by image size, in the plan's order.

    ``metrics``: one full-reference metric or a list of them; every image is decoded once and
    scored by all of them in the same pass. ``precision`` fp16/bf16 runs the deep networks under
    autocast (engine.autocast). ``on_spatial_map(ref, dist, map)`` receives each pair's
    (H, W) distance map from the first metric that makes maps, as soon as its batch is done, so maps
    of a large folder are never all held in memory.
    """
    import torch

    from .engine import autocast, check_precision, make_loader, resolve_device, shard_work, to_device_float

    check_precision(precision)
    metrics = list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
    map_maker = next((m for m in metrics if getattr(m, "makes_maps", False)), None)
    if on_spatial_map is not None and map_maker is None:
        raise InvalidInputError("heat maps need an LPIPS-family metric (lpips, graphics-lpips, baseline) "
                                "among the --metric values")
    dev = resolve_device(device)
    sizes = sizes if sizes is not None else check_sizes(plan, resize)  # callers that checked early pass them
    for hw in set(sizes):
        first = plan.pairs[sizes.index(hw)][0]
        for metric in metrics:
            metric.check_size(hw, name=str(first))
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, hw in enumerate(sizes):
        by_size.setdefault(hw, []).append(i)
    batches = [idx[k:k + batch_size] for idx in by_size.values() for k in range(0, len(idx), batch_size)]
    work = shard_work(len(batches), weights=[len(b) for b in batches])  # under torchrun: a block of batches each
    advance = work.progress(advance)
    mine = batches[work.mine.start:work.mine.stop]
    loader = make_loader(_PairImages(plan.pairs, sizes), None, dev, batch_sampler=mine,
                         num_workers=None if len(plan.pairs) > batch_size else 0, collate_fn=_collate)
    results: list[PairScore | None] = [None] * len(plan.pairs)
    metrics = [m.to(dev).eval() for m in metrics]
    with torch.inference_mode():
        for idx, img0, img1, error in loader:
            if error:
                raise InvalidInputError(error)
            x0, x1 = to_device_float(img0, dev), to_device_float(img1, dev)
            columns: dict[str, np.ndarray] = {}
            heat = None
            for metric in metrics:
                with autocast(dev, precision, metric):
                    if metric is map_maker and on_spatial_map is not None:
                        scores, maps = metric.score_with_maps(x0, x1)
                        heat = maps.float().cpu().numpy()
                    else:
                        scores = metric.score(x0, x1)
                columns[metric.name] = scores.reshape(len(idx), -1).mean(dim=1).double().cpu().numpy()
            for j, i in enumerate(idx):
                ref, dist = plan.pairs[i]
                results[i] = PairScore(ref, dist, {name: float(v[j]) for name, v in columns.items()})
                if heat is not None:
                    on_spatial_map(ref, dist, heat[j])
            if advance:
                advance(len(idx))
    if work.world > 1:
        gathered = work.gather([[results[i].scores for i in batches[b]] for b in work.mine])
        for batch, scores in zip(batches, gathered):
            for i, score in zip(batch, scores):
                results[i] = PairScore(*plan.pairs[i], score)
    return results  # type: ignore[return-value]


class _PairImages:
    """Loads one pair as float tensors; a bad file comes back as a message, so errors raised in
    loader workers still reach the user as one line."""

    def __init__(self, pairs, sizes):
        self.pairs, self.sizes = pairs, sizes

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        import torch

        ref, dist = self.pairs[i]
        try:
            a = load_image(ref)
            b = load_image(dist, size=self.sizes[i])
        except InvalidInputError as exc:
            return i, str(exc), None
        return i, torch.from_numpy(a), torch.from_numpy(b)


def _collate(items):
    """Runs in the loader worker: never raises; the main process turns an error into one line."""
    import torch

    errors = [a for _, a, b in items if b is None]
    if errors:
        return [], None, None, errors[0]
    return ([i for i, _, _ in items], torch.stack([a for _, a, _ in items]),
            torch.stack([b for _, _, b in items]), None)
