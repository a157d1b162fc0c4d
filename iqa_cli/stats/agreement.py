"""How well each metric's scores agree with a database's human scores, with uncertainty.

Arrays and tables in, a frozen report out; nothing here reads images or runs a model. The one
convention that keeps reports readable: scores are *aligned* with the human score before any
statistic, i.e. multiplied by -1 when the metric and the human score point opposite ways (a
lower-is-better distance against a higher-is-better MOS). Every correlation then reads "higher is
better agreement", whatever the metric and the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from ..errors import InvalidInputError
from .bootstrap import STATISTICS, bootstrap_agreement, paired_p_value, resample_indices
from .correlation import _quiet

MIN_IMAGES = 5  # the VQEG logistic has four parameters


def alignment(metric_lower_better: bool, human_higher_better: bool) -> float:
    """+1 when metric scores and human scores point the same way, else -1."""
    metric_higher_better = not metric_lower_better
    return 1.0 if metric_higher_better == human_higher_better else -1.0


@dataclass(frozen=True)
class MetricAgreement:
    name: str
    n: int
    sign: float  # the factor the metric's scores were multiplied by
    point: dict[str, float]
    ci: dict[str, tuple[float, float]]
    per_type: dict[str, float]
    samples: dict[str, np.ndarray] = field(repr=False, compare=False, default_factory=dict)

    def to_dict(self) -> dict:
        out = {"n": self.n, "aligned_sign": self.sign}
        for k in STATISTICS:
            out[k] = self.point.get(k)
            if k in self.ci:
                out[f"{k}_ci"] = list(self.ci[k])
        out["per_type"] = dict(self.per_type)
        return out


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    statistic: str
    difference: float
    p_value: float

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "statistic": self.statistic, "difference": self.difference,
                "p_value": self.p_value}


@dataclass(frozen=True)
class AgreementReport:
    metrics: dict[str, MetricAgreement]
    comparisons: list[Comparison]
    resampling: str  # "content", "image" or "none"
    n_boot: int
    level: float

    def to_dict(self) -> dict:
        return {"metrics": {k: v.to_dict() for k, v in self.metrics.items()},
                "comparisons": [c.to_dict() for c in self.comparisons], "resampling": self.resampling,
                "bootstrap": self.n_boot, "level": self.level}


@_quiet
def per_type_srocc(aligned: np.ndarray, human: np.ndarray, types: np.ndarray) -> dict[str, float]:
    """SROCC within each distortion type (the table the TID and KADID papers print)."""
    out = {}
    for t in dict.fromkeys(types.tolist()):
        if t == "":
            continue
        rows = types == t
        out[str(t)] = float(stats.spearmanr(aligned[rows], human[rows])[0]) if rows.sum() >= 3 else float("nan")
    return out


def agreement_report(scores: dict[str, np.ndarray], lower_better: dict[str, bool], human: np.ndarray,
                     human_higher_better: bool, contents: np.ndarray | None = None, types: np.ndarray | None = None,
                     n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> AgreementReport:
    """Statistics of every metric's scores against ``human`` on the rows where all are finite.

    ``contents`` (one content id per row) makes the bootstrap resample whole contents (synthetic
    databases); without it images are resampled. ``n_boot`` 0 skips intervals and comparisons.
    Two or more metrics are compared pairwise on SROCC with the same resamples."""
    human = np.asarray(human, float)
    keep = np.isfinite(human)
    for name, s in scores.items():
        keep &= np.isfinite(np.asarray(s, float))
    n = int(keep.sum())
    if n < MIN_IMAGES:
        raise InvalidInputError(f"agreement statistics need at least {MIN_IMAGES} images with both a human score and "
                                f"a metric score, found {n}")
    y = human[keep]
    groups = None if contents is None else np.asarray(contents)[keep]
    resamples = resample_indices(n, groups, n_boot, seed) if n_boot else []
    results: dict[str, MetricAgreement] = {}
    for name, s in scores.items():
        sign = alignment(lower_better[name], human_higher_better)
        aligned = sign * np.asarray(s, float)[keep]
        if resamples:
            boot = bootstrap_agreement(aligned, y, resamples, level)
            point, ci, samples = boot.point, boot.ci, boot.samples
        else:
            from .bootstrap import agreement

            point, ci, samples = agreement(aligned, y), {}, {}
        by_type = per_type_srocc(aligned, y, np.asarray(types)[keep]) if types is not None else {}
        results[name] = MetricAgreement(name, n, sign, point, ci, by_type, samples)
    comparisons = []
    names = list(scores)
    if resamples:
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                ra, rb = results[a], results[b]
                comparisons.append(Comparison(a, b, "srocc", ra.point["srocc"] - rb.point["srocc"],
                                              paired_p_value(ra.samples["srocc"], rb.samples["srocc"])))
    resampling = "none" if not resamples else ("content" if contents is not None else "image")
    return AgreementReport(results, comparisons, resampling, len(resamples), level)
