"""PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io.files import atomic_path


def scatter_with_fit(path: str | Path, scores, mos, fit, title: str) -> Path:
    """Objective scores vs MOS with the fitted mapping drawn over them."""
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
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
