"""Bootstrap intervals, the paired test and the aligned correlations of eval-db's statistics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from iqa_cli import InvalidInputError
from iqa_cli.stats.agreement import agreement_report, alignment
from iqa_cli.stats.bootstrap import bootstrap_agreement, paired_p_value, resample_indices


def planted(n: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    mos = rng.uniform(1, 5, n)
    return mos, mos + rng.normal(0, noise, n)


def test_resampling_whole_contents_keeps_each_content_together():
    groups = np.repeat(["a", "b", "c", "d"], [3, 1, 2, 4])
    for idx in resample_indices(len(groups), groups, n_boot=50, seed=1):
        drawn = groups[idx]
        for g in set(drawn):
            # every drawn content brings all its rows, as many times as it was drawn
            assert (drawn == g).sum() % (groups == g).sum() == 0
    plain = resample_indices(10, None, n_boot=3, seed=1)
    assert all(len(i) == 10 and i.max() < 10 for i in plain)
    again = resample_indices(10, None, n_boot=3, seed=1)
    assert all((a == b).all() for a, b in zip(plain, again))


def test_point_estimates_equal_scipy_and_the_interval_contains_them():
    mos, scores = planted(200, 0.8)
    boot = bootstrap_agreement(scores, mos, resample_indices(200, None, 300, 0))
    assert boot.point["srocc"] == pytest.approx(stats.spearmanr(scores, mos)[0], abs=1e-12)
    assert boot.point["krocc"] == pytest.approx(stats.kendalltau(scores, mos)[0], abs=1e-12)
    for k in ("srocc", "krocc", "plcc", "rmse"):
        lo, hi = boot.ci[k]
        assert lo <= boot.point[k] <= hi, k


def test_the_interval_shrinks_as_n_grows():
    widths = []
    for n in (40, 400):
        mos, scores = planted(n, 0.8, seed=n)
        lo, hi = bootstrap_agreement(scores, mos, resample_indices(n, None, 400, 0), statistics=("srocc",)).ci["srocc"]
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_paired_test_small_for_a_noisy_copy_and_one_for_identical_metrics():
    mos, scores = planted(300, 0.4)
    noisy = scores + np.random.default_rng(5).normal(0, 1.5, 300)
    report = agreement_report({"good": scores, "noisy": noisy, "same": scores.copy()},
                              {"good": False, "noisy": False, "same": False}, mos, True, n_boot=300)
    by_pair = {(c.a, c.b): c for c in report.comparisons}
    assert by_pair[("good", "noisy")].p_value < 0.01
    assert by_pair[("good", "noisy")].difference > 0
    assert by_pair[("good", "same")].p_value == 1.0
    assert paired_p_value(np.array([0.1, 0.2]), np.array([0.1, 0.2])) == 1.0


def test_scores_are_aligned_with_the_human_score():
    mos, scores = planted(100, 0.5)
    distance = -scores  # a lower-is-better metric
    report = agreement_report({"d": distance}, {"d": True}, mos, True, n_boot=0)
    assert report.metrics["d"].sign == -1.0
    assert report.metrics["d"].point["srocc"] == pytest.approx(stats.spearmanr(scores, mos)[0])
    dmos = 6 - mos  # lower-is-better human scores: a distance now points the same way
    assert alignment(True, False) == 1.0 and alignment(False, False) == -1.0
    report = agreement_report({"d": distance}, {"d": True}, dmos, False, n_boot=0)
    assert report.metrics["d"].point["srocc"] > 0.8


def test_per_type_srocc_and_too_few_images():
    mos, scores = planted(60, 0.3)
    types = np.array(["01", "02", "03"] * 20)
    report = agreement_report({"m": scores}, {"m": False}, mos, True, types=types, n_boot=0)
    for t in ("01", "02", "03"):
        rows = types == t
        assert report.metrics["m"].per_type[t] == pytest.approx(stats.spearmanr(scores[rows], mos[rows])[0])
    with pytest.raises(InvalidInputError, match="at least 5 images"):
        agreement_report({"m": scores[:4]}, {"m": False}, mos[:4], True)
