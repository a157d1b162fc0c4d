"""Quality of every stimulus of a mesh-quality database, and its agreement with MOS.

Score of a stimulus = mean over its patches (all views) of min(d_patch, 1), as Graphics-LPIPS
defines it for LPIPS-family distances (other metrics: the plain mean of the patch scores);
stimuli whose model had no usable patch are flagged and scored NaN, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import InvalidInputError
from .stats.correlation import CorrelationReport, correlation_report


MIN_STIMULI_FOR_CORRELATION = 3


@dataclass(frozen=True)
class StimulusScore:
    model: str
    stimulus: str
    score: float
    n_patches: int
    mos: float
    split: str
    flag: str

    def to_dict(self) -> dict:
        nan_to_none = (lambda v: None if v != v else v)
        return {"model": self.model, "stimulus": self.stimulus, "score": nan_to_none(self.score),
                "n_patches": self.n_patches, "MOS": nan_to_none(self.mos), "split": self.split, "flag": self.flag}


@dataclass(frozen=True)
class MeshDBResult:
    store: Path
    metric: dict
    stimuli: list[StimulusScore]
    correlation: CorrelationReport | None
    flagged: list[str] = field(default_factory=list)
    n_patches: int = 0
    description: str = ""  # the metric in one human line, e.g. "lpips (alex, v0.1)"

    def to_dict(self) -> dict:
        stats = self.correlation.to_dict() if self.correlation else {}
        return {"store": str(self.store), **self.metric, "n": stats.get("n", 0),
                **{k: stats.get(k) for k in ("plcc", "srocc", "krocc", "rmse", "srocc_raw")},
                "fit": stats.get("fit"), "n_patches": self.n_patches, "flagged": self.flagged,
                "stimuli": [s.to_dict() for s in self.stimuli]}


def open_store(store):
    from .io.store import PatchStore

    return store if isinstance(store, PatchStore) else PatchStore.open(store)


def aggregate(distances: np.ndarray, first: np.ndarray, count: np.ndarray, cap: float | None = 1.0) -> np.ndarray:
    """Mean of min(d, cap) over each stimulus's contiguous patch run (no cap when None); NaN for
    empty runs. Graphics-LPIPS caps patch distances at 1; other metrics' patch scores are averaged."""
    clipped = distances if cap is None else np.minimum(distances, cap)
    out = np.full(len(first), np.nan)
    for i, (f, c) in enumerate(zip(first, count)):
        if c > 0:
            out[i] = clipped[f:f + c].mean()
    return out


def stimulus_scores(store, metric, stimuli: Sequence[int] | None = None, batch_size: int | None = None, device="auto",
                    precision: str = "fp32", num_workers: int | None = None,
                    advance: Callable[[int], None] | None = None) -> np.ndarray:
    """Scores of the given stimulus rows (all by default), in that order."""
    from .engine import score_store_patches

    store = open_store(store)
    rows = np.arange(len(store.stimuli)) if stimuli is None else np.asarray(stimuli, dtype=int)
    d = score_store_patches(store, metric, rows, batch_size=batch_size, device=device, precision=precision,
                            num_workers=num_workers, advance=advance)
    table = store.stimuli.iloc[rows]
    return aggregate(d, table["first"].to_numpy(), table["count"].to_numpy(), getattr(metric, "patch_score_cap", None))


def score_mesh_db(store, metric, batch_size: int | None = None, device="auto", precision: str = "fp32", fit: str = "glm",
                  num_workers: int | None = None, advance: Callable[[int], None] | None = None) -> MeshDBResult:
    """Score every stimulus; with MOS in the store, correlate after a ``fit`` ('glm' or 'vqeg4')."""
    store = open_store(store)
    store.require_patches()  # an empty store is an error, not a table of NaN scores
    table = store.stimuli
    known = table["mos"].to_numpy(dtype=float)
    known = known[np.isfinite(known)]
    if fit == "glm" and len(known) and (known.min() < 0 or known.max() > 1):  # before any patch is scored
        raise InvalidInputError(f"{store.path}: MOS run from {known.min():g} to {known.max():g}, but the binomial "
                                f"GLM fit (--fit glm, the default) needs MOS in [0, 1]: use --fit vqeg4, or rescale "
                                f"the MOS column of the database CSV to [0, 1] and run iqa patchify again")
    scores = stimulus_scores(store, metric, None, batch_size=batch_size, device=device, precision=precision,
                             num_workers=num_workers, advance=advance)
    rows = [StimulusScore(str(m), str(s), float(sc), int(c), float(mos), str(sp), str(fl))
            for m, s, sc, c, mos, sp, fl in zip(table["model"], table["stimulus"], scores, table["count"],
                                                table["mos"], table["split"], table["flag"])]
    mos = table["mos"].to_numpy()
    scorable = int((np.isfinite(scores) & np.isfinite(mos)).sum())
    # Correlation needs a few points; with fewer the scores are still worth returning.
    report = correlation_report(scores, mos, fit=fit) if scorable >= MIN_STIMULI_FOR_CORRELATION else None
    meta = metric.meta()
    return MeshDBResult(store.path, meta, rows, report, [r.stimulus for r in rows if r.flag],
                        int(table["count"].sum()), metric.describe())
