"""Plots (matplotlib, Agg backend: no display needed), in the format their file name asks for."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InvalidInputError
from .io.files import atomic_path

PLOT_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}


def plot_format(path: str | Path, option: str = "--plot") -> str:
    """The format a plot file name asks for; an unknown suffix is refused before any work."""
    fmt = PLOT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InvalidInputError(f"{path}: {option} writes .png, .pdf or .svg files; give a file name ending in one "
                                "of them")
    return fmt


def scatter_with_fit(path: str | Path, scores, mos, fit, title: str) -> Path:
    """Objective scores vs MOS with the fitted mapping drawn over them (.png, .pdf or .svg)."""
    fmt = plot_format(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, y = np.asarray(scores, float), np.asarray(mos, float)
    keep = np.isfinite(s) & np.isfinite(y)
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    ax.scatter(s[keep], y[keep], s=14, alpha=0.7, label="stimuli")
    if fit is not None and keep.any():
        grid = np.linspace(s[keep].min(), s[keep].max(), 200)
        ax.plot(grid, fit.predict(grid), color="crimson", lw=2, label=f"{fit.kind} fit")
    ax.set_xlabel("objective score")
    ax.set_ylabel("MOS")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt)
    plt.close(fig)
    return Path(path)


def eval_db_figure(path: str | Path, result) -> Path:
    """eval-db's figure: one scatter per metric (aligned scores vs the human score, with the VQEG
    logistic fit), and, where the database knows distortion types, a bar chart of SROCC per type."""
    fmt = plot_format(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .stats.correlation import fit_vqeg4

    report, table = result.report, result.table
    names = list(result.scores)
    per_type = report is not None and any(m.per_type for m in report.metrics.values())
    cols = len(names) + (1 if per_type else 0)
    fig, axes = plt.subplots(1, cols, figsize=(4.2 * cols + (2.5 if per_type else 0), 4.0), dpi=120, squeeze=False)
    y = table.scores
    for ax, name in zip(axes[0], names):
        m = report.metrics[name]
        s = m.sign * result.scores[name]
        keep = np.isfinite(s) & np.isfinite(y)
        ax.scatter(s[keep], y[keep], s=8, alpha=0.5)
        if keep.sum() >= 5:
            fit = fit_vqeg4(s[keep], y[keep])
            grid = np.linspace(s[keep].min(), s[keep].max(), 200)
            ax.plot(grid, fit.predict(grid), color="crimson", lw=2)
        lo, hi = m.ci.get("srocc", (float("nan"), float("nan")))
        ax.set_title(f"{name}: SROCC {m.point['srocc']:.3f} [{lo:.3f}, {hi:.3f}]", fontsize=9)
        ax.set_xlabel(f"{'-' if m.sign < 0 else ''}{name} score (aligned)")
        ax.set_ylabel(table.score_name)
        ax.grid(alpha=0.3)
    if per_type:
        ax = axes[0][-1]
        types = list(dict.fromkeys(t for m in report.metrics.values() for t in m.per_type))
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            values = [report.metrics[name].per_type.get(t, np.nan) for t in types]
            ax.bar(np.arange(len(types)) + k * width - 0.4 + width / 2, values, width, label=name)
        ax.set_xticks(np.arange(len(types)))
        ax.set_xticklabels(types, rotation=90, fontsize=7)
        ax.set_ylabel("SROCC within type")
        ax.set_title("per distortion type", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{table.database}: {len(table)} images", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt)
    plt.close(fig)
    return Path(path)
