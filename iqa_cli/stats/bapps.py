"""BAPPS protocol scores (numpy only; arrays in, floats out).

  two_afc_score          mean over triplets of [d0<d1](1-h) + [d1<d0]h + 0.5[d0==d1]
  jnd_average_precision  VOC average precision of "same" pairs ranked by ascending distance

The paper's baselines (L2, DSSIM) are quality models, not statistics: models/bapps_baselines.py.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError


def _flat(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise InvalidInputError(f"expected one value per item in every array, found {shown}")
    return next(iter(lengths.values()))


# -- 2AFC ----------------------------------------------------------------------------------------
def two_afc_agreement(d0, d1, judge) -> np.ndarray:
    """Per triplet: how far the metric agrees with people, [d0<d1](1-h) + [d1<d0]h + 0.5[d0==d1].

    h (judge) is the fraction of people who preferred p1, i.e. found p1 closer to the reference.
    Inputs of any shape are flattened (one value per triplet)."""
    d0, d1, h = _flat(d0), _flat(d1), _flat(judge)
    _same_length(d0=d0, d1=d1, judge=h)
    return (d0 < d1) * (1.0 - h) + (d1 < d0) * h + (d0 == d1) * 0.5


def two_afc_score(d0, d1, judge) -> float:
    """Mean agreement over triplets (in [0, 1]; the paper reports it as a percentage)."""
    agreement = two_afc_agreement(d0, d1, judge)
    if agreement.size == 0:
        raise InvalidInputError("2AFC score of no triplets: give at least one")
    return float(agreement.mean())


# -- JND -----------------------------------------------------------------------------------------
def voc_ap(recall, precision) -> float:
    """PASCAL VOC average precision (the 'all points' form, not the 2007 11-point one).

    Sentinels recall [0, ..., 1] and precision [0, ..., 0], the precision envelope (running
    maximum from the right), then the sum of delta-recall x precision where recall changes."""
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def jnd_precision_recall(d, same) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of "same" pairs taken in order of ascending distance.

    Distances are flattened first (the original code sorted an (N,1,1,1) array, which sorts
    nothing). Ties keep the dataset's order (a stable sort), so the result is deterministic."""
    d, s = _flat(d), _flat(same)
    _same_length(d=d, same=s)
    order = np.argsort(d, kind="stable")
    s = s[order]
    tp = np.cumsum(s)
    fp = np.cumsum(1.0 - s)
    fn = s.sum() - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    return precision, recall


def jnd_average_precision(d, same) -> float:
    """JND score: VOC average precision of pairs judged "same", ranked by ascending distance.

    ``same`` may be fractional (the share of people who said "same"); it counts as that much
    of a true positive. NaN when no pair was judged the same at all (the score is undefined)."""
    d, s = _flat(d), _flat(same)
    _same_length(d=d, same=s)
    if d.size == 0:
        raise InvalidInputError("JND average precision of no pairs: give at least one")
    if not s.sum() > 0:
        return float("nan")
    precision, recall = jnd_precision_recall(d, s)
    return voc_ap(recall, precision)



jnd_map = jnd_average_precision  # the name DESIGN.md uses
