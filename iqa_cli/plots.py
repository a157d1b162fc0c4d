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
