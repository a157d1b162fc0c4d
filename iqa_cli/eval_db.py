"""Evaluate quality metrics on an image-quality database: score every image, then agree with people.

``eval_db(table, metrics)`` takes a ``QualityTable`` (from ``datasets.read_database``) and built
metrics, and returns a frozen ``EvalResult``: per-image scores, and per metric n, SROCC, KROCC,
PLCC, RMSE with bootstrap intervals, per-type SROCC and paired comparisons (stats/agreement.py).

Scoring streams the images once for all metrics:

- With references, rows are grouped by reference; a work item is one reference and up to
  ``batch_size`` of its distorted images, so each reference is decoded once per item, and an
  LPIPS-family metric computes its features once for the whole item (as score-mesh-db reuses
  reference patches). No-reference metrics score the same distorted batches.
- Without references (authentic databases), items are batches of distorted images of one size.

Images come from the HDF5 image cache (``datasets/cache.py``; built on the first run) or straight
from the files. Work items are sharded across torchrun processes by the engine and gathered on
rank 0 in row order, so a run on N processes gives exactly the single-process scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InvalidInputError
from .stats.agreement import AgreementReport, agreement_report

Advance = Callable[[int], None]


# ---------------------------------------------------------------------------------------------
# work plan
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkItem:
    ref_row: int | None  # the row whose reference image the item shares, None without references
    rows: tuple[int, ...]  # table rows of the distorted images scored together


def plan_work(table, batch_size: int, sizes: np.ndarray | None = None) -> list[WorkItem]:
    """Work items in row order of their first row. ``sizes`` (N, 2) distorted image sizes batch
    reference-free tables by size (images of one batch must share a size)."""
    n = len(table)
    items: list[WorkItem] = []
    if table.has_references:
        groups: dict[str, list[int]] = {}
        for row, ref in enumerate(table.rows["ref"].tolist()):
            groups.setdefault(str(ref), []).append(row)
        for rows in groups.values():
            for k in range(0, len(rows), batch_size):
                items.append(WorkItem(rows[0], tuple(rows[k:k + batch_size])))
    else:
        if sizes is None:
            raise ValueError("a table without references needs its image sizes to batch them")
        by_size: dict[tuple[int, int], list[int]] = {}
        for row in range(n):
            by_size.setdefault((int(sizes[row][0]), int(sizes[row][1])), []).append(row)
        for rows in by_size.values():
            for k in range(0, len(rows), batch_size):
                items.append(WorkItem(None, tuple(rows[k:k + batch_size])))
    items.sort(key=lambda item: item.rows[0])
    return items


class _WorkImages:
    """Dataset over work items: (item index, reference uint8 (H,W,3) or None, distorted (n,H,W,3) or an
    error message). Reads from an ImageStore when given, else decodes the table's files."""

    def __init__(self, table, items: list[WorkItem], store=None, short_side: int = 0):
        self.items = items
        self.store = store
        self.dist = table.rows["dist"].tolist()
        self.ref = table.rows["ref"].tolist()
        self.names = table.rows["name"].tolist()
        self.short_side = short_side

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, row: int, which: str) -> np.ndarray:
        if self.store is not None:
            return self.store.read_row(row, which)
        from .datasets.cache import load_database_image

        return load_database_image(self.dist[row] if which == "dist" else self.ref[row], self.short_side)

    def __getitem__(self, i: int):
        import torch

        item = self.items[i]
        try:
            ref = None if item.ref_row is None else self._read(item.ref_row, "ref")
            dists = [self._read(r, "dist") for r in item.rows]
        except Exception as exc:  # noqa: BLE001 - a worker hands the message back; the main process raises it
            return i, None, None, str(exc)
        shape = ref.shape if ref is not None else dists[0].shape
        for row, img in zip(item.rows, dists):
            if img.shape != shape:
                other = (f"its reference {Path(str(self.ref[row])).name}" if ref is not None
                         else "the other images of its batch")
                return i, None, None, (f"{self.names[row]} is {img.shape[1]}x{img.shape[0]} but {other} is "
                                       f"{shape[1]}x{shape[0]}: a database's images must match their reference's "
                                       f"size")
        return (i, None if ref is None else torch.from_numpy(ref), torch.from_numpy(np.stack(dists)), None)


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------

def check_metrics_fit(table, metrics: Sequence) -> None:
    """Full-reference metrics need every row's reference (before any image is read)."""
    fr = [m for m in metrics if m.kind == "fr"]
    if fr and not table.has_references:
        raise InvalidInputError(f"{table.root}: {table.database} has no reference images, but --metric "
                                f"{', '.join(m.name for m in fr)} {'is' if len(fr) == 1 else 'are'} full-reference "
                                f"(use no-reference metrics: 'iqa list-metrics --kind nr')")


def _has_feature_path(metric) -> bool:
    return hasattr(metric, "features") and hasattr(metric, "distance_from_features")


def _score_item(metric, ref, dist):
    """(n,) scores of one item's distorted batch (and its one reference)."""

    n = dist.shape[0]
    if metric.kind == "nr":
        return metric.score(dist)
    if _has_feature_path(metric):
        metric.check_size(tuple(ref.shape[2:]))
        ref_feats = [f.expand(n, *f.shape[1:]) for f in metric.features(ref)]
        return metric.distance_from_features(ref_feats, metric.features(dist), reuse_feats1=True)
    return metric.score(ref.expand(n, -1, -1, -1), dist)


def score_table(table, metrics: Sequence, store=None, batch_size: int = 32, device="auto",
                num_workers: int | None = None, advance: Advance | None = None,
                short_side: int | None = None, precision: str = "fp32") -> dict[str, np.ndarray]:
    """Every metric's score of every row, float64 (N,) arrays keyed by metric name, in one pass
    over the images (see the module docstring); a "metric" whose ``score`` gives (n, d) rows (a
    feature extractor, e.g. GRepQ's data-efficient features) gets an (N, d) array. ``store``: an ImageStore of the table (else the
    files are decoded, resized to the table's short side unless ``short_side`` says otherwise)."""
    import torch

    from .datasets.cache import ImageDataset, TableImageDataset, resolve_short_side
    from .engine import autocast, check_precision, make_loader, resolve_device, shard_work, to_device_float

    check_precision(precision)
    check_metrics_fit(table, metrics)
    dev = resolve_device(device)
    side = resolve_short_side(table, short_side)
    sizes = None
    if not table.has_references:
        sizes = (ImageDataset(store, "dist").sizes() if store is not None
                 else _file_sizes(TableImageDataset(table, "dist", short_side=side)))
    items = plan_work(table, batch_size, sizes)
    # under torchrun each process scores its block of items; gather() returns them in item order
    work = shard_work(len(items), weights=[len(item.rows) for item in items])
    advance = work.progress(advance)
    loader = make_loader(_WorkImages(table, items, store, side), None, dev, num_workers=num_workers,
                         batch_sampler=[[i] for i in work.mine], collate_fn=_only)
    metrics = [m.to(dev).eval() for m in metrics]
    mine = []
    with torch.inference_mode():
        for i, ref, dist, error in loader:
            if error:
                raise InvalidInputError(error)
            x = to_device_float(dist, dev)
            r = None if ref is None else to_device_float(ref[None], dev)
            scored = {}
            for m in metrics:
                with autocast(dev, precision, m):
                    scored[m.name] = _score_item(m, r, x).double().cpu().numpy()
            mine.append(scored)
            if advance is not None:
                advance(len(items[i].rows))
    scores = {m.name: np.full(len(table), np.nan) for m in metrics}
    for item, result in zip(items, work.gather(mine)):
        for name, values in result.items():
            if scores[name].shape[1:] != values.shape[1:]:  # a feature extractor: (n, d) per item
                scores[name] = np.full((len(table), *values.shape[1:]), np.nan)
            scores[name][list(item.rows)] = values
    return scores


def _only(batch):
    """Collate for batch_sampler items of one: the item itself (it is already a batch)."""
    return batch[0]


def _file_sizes(dataset) -> np.ndarray:
    """(N, 2) image sizes of a table's files, after the dataset's resize, read from headers only."""
    from .io.images import image_size

    out = np.zeros((len(dataset), 2), dtype=np.int64)
    for i, row in enumerate(dataset.rows):
        h, w = image_size(dataset.paths[row])
        if dataset.short_side and min(h, w) != dataset.short_side:
            scale = dataset.short_side / min(h, w)
            h, w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        out[i] = h, w
    return out


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalResult:
    """Scores of every image and their agreement with the database's human scores."""

    table: Any  # the QualityTable evaluated
    metrics: list[dict]  # each metric's meta (name, options), in the order given
    lower_better: dict[str, bool]
    scores: dict[str, np.ndarray]
    report: AgreementReport | None  # None when the database has no human scores
    cache: dict | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self, images: bool = True) -> dict:
        t = self.table
        doc: dict[str, Any] = {"format": t.database, "root": str(t.root), "n": len(t),
                               "score_name": t.score_name, "human_higher_better": t.higher_better,
                               "aligned": "each metric's scores are multiplied by -1 where it points the other way "
                                          "from the human score, so correlations read higher = better agreement",
                               "metric_info": self.metrics, "metrics": {}, "comparisons": [], "notes": self.notes,
                               "cache": self.cache}
        if self.report is not None:
            r = self.report
            doc["metrics"] = {name: {**m.to_dict(), "lower_better": self.lower_better[name]}
                              for name, m in r.metrics.items()}
            doc["comparisons"] = [c.to_dict() for c in r.comparisons]
            doc.update(resampling=r.resampling, bootstrap=r.n_boot, level=r.level)
        if images:
            rows = t.rows
            doc["images"] = [{"dist": name, "ref": ref, "mos": score, "content": content, "type": typ,
                              "level": int(level), **{m: float(v[i]) for m, v in self.scores.items()}}
                             for i, (name, ref, score, content, typ, level) in enumerate(zip(
                                 rows["name"], _relative_refs(t), rows["score"], rows["content"], rows["type"],
                                 rows["level"]))]
        return doc


def _relative_refs(table) -> list[str | None]:
    from .datasets.table import relative_path

    return [relative_path(r, table.root) for r in table.rows["ref"].tolist()]


def eval_db(table, metrics: Sequence, store=None, batch_size: int = 32, device="auto", bootstrap: int = 1000,
            seed: int = 0, level: float = 0.95, num_workers: int | None = None, advance: Advance | None = None,
            short_side: int | None = None, cache: dict | None = None, precision: str = "fp32") -> EvalResult:
    """Score ``table`` with every metric and report their agreement with its human scores.

    Resampling for the intervals follows the database: whole reference contents for synthetic
    databases (the protocol 'content'), images otherwise. ``bootstrap`` 0 skips intervals."""
    if not len(table):
        raise InvalidInputError(f"{table.root}: the database has no images to evaluate")
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"--metric {sorted({n for n in names if names.count(n) > 1})[0]} is given twice")
    scores = score_table(table, metrics, store, batch_size, device, num_workers, advance, short_side, precision)
    lower_better = {m.name: bool(m.lower_better) for m in metrics}
    notes = list(table.warnings)
    report = None
    if table.has_scores:
        contents = table.rows["content"].to_numpy() if table.protocol == "content" else None
        types = table.rows["type"].astype(str).to_numpy() if table.has_types else None
        report = agreement_report(scores, lower_better, table.scores, table.higher_better, contents, types,
                                  n_boot=bootstrap, seed=seed, level=level)
    else:
        notes.append(f"{table.database} has no human scores here: images were scored, nothing was correlated")
    return EvalResult(table, [m.meta() for m in metrics], lower_better, scores, report, cache, notes)
