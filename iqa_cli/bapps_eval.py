"""The BAPPS protocols (2AFC and JND) run over a BAPPS tree with any distance: LPIPS, its
head-less baseline, or the classic L2 / DSSIM rows of the paper.

Library only: never prints. Batches stream through the engine's DataLoader set-up; every
subset is listed and its judge/same values checked before the first forward pass.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from .datasets.bapps import BappsDataset, check_mode, open_subset, resolve_subsets
from .engine import iterate_batches, make_loader, resolve_device, to_device_float
from .errors import InvalidInputError
from .models.bapps_baselines import BASELINES, check_colorspace
from .stats.bapps import jnd_average_precision, two_afc_agreement

MODELS = ("lpips", "baseline", "l2", "ssim", "graphics-lpips")
# per-item columns of each protocol, in CSV order (after subset and name)
ITEM_COLUMNS = {"2afc": ("d0", "d1", "judge", "agreement"), "jnd": ("d", "same")}
SCORE_NAMES = {"2afc": "2AFC score", "jnd": "JND mAP"}


@dataclass(frozen=True, eq=False)
class SubsetResult:
    """One subset's score and its per-item numbers (``columns`` per ITEM_COLUMNS[mode])."""

    subset: str
    mode: str
    score: float
    names: tuple[str, ...]
    columns: dict[str, np.ndarray] = field(repr=False)

    @property
    def n(self) -> int:
        return len(self.names)

    def rows(self) -> Iterator[dict]:
        keys = ITEM_COLUMNS[self.mode]
        for i, name in enumerate(self.names):
            row = {"subset": self.subset, "name": name}
            row.update({k: float(self.columns[k][i]) for k in keys})
            yield row


@dataclass(frozen=True, eq=False)
class BappsReport:
    """Scores of one protocol over its subsets; ``mean`` is the unweighted mean over subsets
    (NaN when a subset's score is undefined, e.g. a JND subset with no "same" pair)."""

    mode: str
    model: str
    results: tuple[SubsetResult, ...]

    @property
    def scores(self) -> dict[str, float]:
        return {r.subset: r.score for r in self.results}

    @property
    def n(self) -> dict[str, int]:
        return {r.subset: r.n for r in self.results}

    @property
    def mean(self) -> float:
        return float(np.mean([r.score for r in self.results])) if self.results else float("nan")

    @property
    def columns(self) -> tuple[str, ...]:
        return ("subset", "name", *ITEM_COLUMNS[self.mode])

    def rows(self) -> Iterator[dict]:
        for result in self.results:
            yield from result.rows()

    def summary(self) -> dict:
        """{"mode", "scores", "mean", "n"}: what ``iqa eval-bapps --json`` prints (NaN as None)."""
        return {"mode": self.mode, "scores": {k: _nan_none(v) for k, v in self.scores.items()},
                "mean": _nan_none(self.mean), "n": self.n}

    def to_dict(self, items: bool = True) -> dict:
        out = self.summary()
        out["model"] = self.model
        if items:
            out["items"] = list(self.rows())
        return out


def _nan_none(x: float) -> float | None:
    return None if x != x else float(x)


# -- distances -------------------------------------------------------------------------------------
class _Scorer:
    """Distances for one batch: (first, others...) uint8 (N,3,H,W) -> one (N,) array per other."""

    device: torch.device
    description: str

    def __call__(self, first: torch.Tensor, others: list[torch.Tensor]) -> list[np.ndarray]:
        raise NotImplementedError

    def session(self):
        return contextlib.nullcontext()


class _BaselineScorer(_Scorer):
    def __init__(self, model: str, colorspace: str):
        self.fn = BASELINES[model]
        self.colorspace = colorspace
        self.device = torch.device("cpu")
        self.description = f"{'dssim' if model == 'ssim' else 'l2'} ({colorspace})"

    def __call__(self, first, others):
        a = first.permute(0, 2, 3, 1).numpy()
        return [self.fn(a, o.permute(0, 2, 3, 1).numpy(), colorspace=self.colorspace) for o in others]


class _TorchScorer(_Scorer):
    def __init__(self, metric: nn.Module, description: str):
        self.metric = metric
        self.description = description
        tensor = next(iter(metric.parameters()), None)
        if tensor is None:
            tensor = next(iter(metric.buffers()), None)
        self.device = tensor.device if tensor is not None else torch.device("cpu")

    @contextlib.contextmanager
    def session(self):
        """Eval mode (no dropout) and no autograd while scoring; the caller's mode is restored."""
        was_training = self.metric.training
        self.metric.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.metric.train(was_training)

    def __call__(self, first, others):
        xs = [to_device_float(t, self.device) for t in (first, *others)]
        n = xs[0].shape[0]
        metric = self.metric
        if hasattr(metric, "features") and hasattr(metric, "distance_from_features"):
            # one backbone pass for all images; the shared image's features serve every pair
            feats = metric.features(torch.cat(xs))
            parts = [[f[i * n:(i + 1) * n] for f in feats] for i in range(len(xs))]
            out_hw = tuple(xs[0].shape[2:])
            ds = [metric.distance_from_features(parts[0], p, out_hw=out_hw) for p in parts[1:]]
        else:
            ds = [metric(xs[0], x) for x in xs[1:]]
        # spatial metrics give maps: their mean is the distance
        return [d.reshape(n, -1).mean(dim=1).float().cpu().numpy().astype(np.float64) for d in ds]


def _describe(metric: nn.Module, checkpoint: str | Path | None = None) -> str:
    name = getattr(metric, "metric_name", type(metric).__name__)
    spec = getattr(metric, "spec", None)
    parts = [name]
    if spec is not None:
        parts.append(spec.name)
    if getattr(metric, "version", None) and name != "baseline":
        parts.append(f"v{metric.version}")
    if checkpoint is not None:
        parts.append(f"({Path(checkpoint).name})")
    return " ".join(parts)


def _make_scorer(model: str, net, version, checkpoint, backbone_weights, colorspace: str, device,
                 metric: nn.Module | None) -> _Scorer:
    if metric is not None:
        return _TorchScorer(metric, _describe(metric))
    if model not in MODELS:
        raise InvalidInputError(f"--model {model}: choose one of lpips, baseline, l2, ssim")
    if model in BASELINES:
        given = [opt for opt, value in (("--net", net), ("--version", version), ("--checkpoint", checkpoint))
                 if value is not None]
        if given:
            raise InvalidInputError(f"--model {model} is a classic baseline without a network: drop "
                                    f"{', '.join(given)} (they apply to --model lpips or baseline)")
        return _BaselineScorer(model, colorspace)
    if model == "baseline" and checkpoint is not None:
        raise InvalidInputError("--model baseline has no heads to load: drop --checkpoint or use --model lpips")
    from .registry import create_metric

    name = model
    if model == "lpips" and checkpoint is not None:
        from .weights import read_checkpoint

        if read_checkpoint(checkpoint).head_type == "graphics":
            name = "graphics-lpips"  # a Graphics-LPIPS checkpoint: MLP heads
    built = create_metric(name, net=net, version=version, checkpoint=checkpoint,
                          backbone_weights=backbone_weights, device=device)
    return _TorchScorer(built, _describe(built, checkpoint))


# -- the protocol ------------------------------------------------------------------------------------
def _run_subset(dataset: BappsDataset, scorer: _Scorer, batch_size: int, num_workers: int | None,
                advance: Callable[[int], None] | None) -> SubsetResult:
    mode = dataset.mode
    images = dataset.image_folders  # 2afc: ref, p0, p1 (pairs ref-p0, ref-p1); jnd: p0, p1
    n_dists = len(images) - 1
    dists: list[list[np.ndarray]] = [[] for _ in range(n_dists)]
    loader = make_loader(dataset, batch_size, scorer.device, num_workers=num_workers)
    with scorer.session():
        for batch in iterate_batches(loader, advance, count=lambda b: int(b["index"].shape[0])):
            out = scorer(batch[images[0]], [batch[k] for k in images[1:]])
            for acc, d in zip(dists, out):
                acc.append(d)
    arrays = [np.concatenate(acc) if acc else np.zeros(0) for acc in dists]
    values = dataset.values
    if mode == "2afc":
        agreement = two_afc_agreement(arrays[0], arrays[1], values)
        columns = {"d0": arrays[0], "d1": arrays[1], "judge": values, "agreement": agreement}
        score = float(agreement.mean())
    else:
        columns = {"d": arrays[0], "same": values}
        score = jnd_average_precision(arrays[0], values)
    return SubsetResult(dataset.subset, mode, score, dataset.names, columns)


def eval_bapps(root: str | Path, mode: str = "2afc", subsets: list[str] | tuple[str, ...] | None = None,
               model: str = "lpips", net: str | None = None, version: str | None = None,
               checkpoint: str | Path | None = None, backbone_weights: str | Path = "imagenet",
               colorspace: str = "Lab", batch_size: int = 50, device: str | torch.device = "auto",
               limit: int | None = None, num_workers: int | None = None,
               advance: Callable[[int], None] | None = None, metric: nn.Module | None = None) -> BappsReport:
    """Score BAPPS subsets with one protocol.

    root: the BAPPS ``dataset`` folder (holding 2afc/ and jnd/). subsets: ``split/name`` strings
    (a bare name means val/name); None = every val subset present. model: lpips | baseline (LPIPS
    without heads) | l2 | ssim (DSSIM), with ``colorspace`` Lab or RGB for l2/ssim. metric: an
    already-built distance module (e.g. a PerceptualDistance in training) used instead of
    ``model``; it runs on its own device, in eval mode, and its train/eval mode is restored.
    limit: the first N items (by name) of each subset. advance(n) is called after each batch.
    """
    mode = check_mode(mode)
    resolve_device(device)  # --device means the same for every --model: a bad one is an error, never ignored
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise InvalidInputError(f"--batch-size {batch_size}: expected a whole number >= 1")
    colorspace = check_colorspace(colorspace)
    names = resolve_subsets(root, mode, subsets)
    # list and check every subset (and read every judge/same value) before any model work
    datasets = [open_subset(root, mode, name, limit=limit) for name in names]
    scorer = _make_scorer(model, net, version, checkpoint, backbone_weights, colorspace, device, metric)
    results = tuple(_run_subset(ds, scorer, int(batch_size), num_workers, advance) for ds in datasets)
    return BappsReport(mode, scorer.description, results)
