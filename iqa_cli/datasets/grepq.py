"""GRepQ's low-level training data: fragment views of the versions of one content, and their FSIM.

A training item is one content: its pristine image and its distorted versions (same size), V
images. Two things are made from them (../shared/reference/grepq.md):

* Two "fragment" views. A view is a (grid*piece)^2 image -- 224x224 from a 7x7 grid of 32x32
  pieces -- with one piece taken at a random offset inside each cell of a 7x7 partition of the
  image (cells of floor(H/7) x floor(W/7)); images whose short side is under 224 are first
  upsampled (bilinear) so it is 224. The same positions are cut from every version, so the V
  fragments of a view line up. The augmented view draws new offsets and applies one random
  horizontal and one random vertical flip (each with probability 1/2), shared by the V versions.
* The V x V similarity s_kl = FSIM(x_k, x_l) between full-resolution versions (piq's FSIMc, data
  range 1, as the authors used; symmetric, diagonal 1). The original recomputes it every epoch;
  ``cached_fsim_matrix`` computes it once per content into any dict-like store (a dict, or an
  HDF5-backed mapping the recipe provides).

Everything takes a numpy Generator so a seeded run draws the same views.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

FRAGMENT_GRID = 7
FRAGMENT_PIECE = 32


@dataclass(frozen=True)
class FragmentLayout:
    """Where the pieces of one view come from: top-left corners (grid, grid) in the (upsampled)
    versions, and the view's flips."""

    ys: np.ndarray
    xs: np.ndarray
    piece: int
    flip_h: bool = False
    flip_v: bool = False

    def to_dict(self) -> dict:
        return {"ys": self.ys.tolist(), "xs": self.xs.tolist(), "piece": self.piece, "flip_h": self.flip_h,
                "flip_v": self.flip_v}


def _check_versions(versions: torch.Tensor) -> torch.Tensor:
    if versions.ndim != 4 or versions.shape[1] != 3 or versions.shape[0] < 1:
        raise InvalidInputError(f"expected the versions of one content as (V, 3, H, W), got {tuple(versions.shape)}")
    if versions.dtype == torch.uint8:
        return versions.float() / 255
    return versions.float()


def upsample_for_fragments(versions: torch.Tensor, grid: int = FRAGMENT_GRID, piece: int = FRAGMENT_PIECE
                           ) -> torch.Tensor:
    """Bilinear upsampling (aspect kept) so the short side is at least grid * piece; larger images as they are."""
    versions = _check_versions(versions)
    h, w = versions.shape[2:]
    side = grid * piece
    if min(h, w) >= side:
        return versions
    scale = side / min(h, w)
    size = (max(side, round(h * scale)), max(side, round(w * scale)))
    return F.interpolate(versions, size=size, mode="bilinear", align_corners=False).clamp_(0, 1)


def sample_fragment_layout(height: int, width: int, rng: np.random.Generator, grid: int = FRAGMENT_GRID,
                           piece: int = FRAGMENT_PIECE, flip: bool = False) -> FragmentLayout:
    """One piece per cell at a uniform random offset inside the cell (cells floor(H/grid) high)."""
    cell_h, cell_w = height // grid, width // grid
    if cell_h < piece or cell_w < piece:
        raise InvalidInputError(f"a {height}x{width} image has {cell_h}x{cell_w} cells, smaller than the "
                                f"{piece}x{piece} pieces (upsample it first: upsample_for_fragments)")
    cells = np.arange(grid)
    ys = cells[:, None] * cell_h + rng.integers(0, cell_h - piece + 1, size=(grid, grid))
    xs = cells[None, :] * cell_w + rng.integers(0, cell_w - piece + 1, size=(grid, grid))
    flip_h, flip_v = (bool(rng.random() < 0.5), bool(rng.random() < 0.5)) if flip else (False, False)
    return FragmentLayout(ys.astype(np.int64), xs.astype(np.int64), piece, flip_h, flip_v)


def cut_fragments(versions: torch.Tensor, layout: FragmentLayout) -> torch.Tensor:
    """(V, 3, H, W) -> (V, 3, grid*piece, grid*piece): the same pieces of every version, then the flips."""
    p = layout.piece
    rows = [torch.cat([versions[:, :, y:y + p, x:x + p] for y, x in zip(ys_row, xs_row)], dim=3)
            for ys_row, xs_row in zip(layout.ys, layout.xs)]
    out = torch.cat(rows, dim=2)
    dims = [d for d, on in ((3, layout.flip_h), (2, layout.flip_v)) if on]
    return out.flip(dims) if dims else out


def fragment_views(versions: torch.Tensor, rng: np.random.Generator | int, grid: int = FRAGMENT_GRID,
                   piece: int = FRAGMENT_PIECE) -> tuple[torch.Tensor, torch.Tensor]:
    """The anchor and the augmented fragment views of one content's V versions: two (V, 3, S, S), S = grid*piece."""
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    versions = upsample_for_fragments(versions, grid, piece)
    h, w = versions.shape[2:]
    anchor = cut_fragments(versions, sample_fragment_layout(h, w, rng, grid, piece))
    augmented = cut_fragments(versions, sample_fragment_layout(h, w, rng, grid, piece, flip=True))
    return anchor, augmented


# -- FSIM similarities -------------------------------------------------------------------------
def fsim_matrix(versions: torch.Tensor, batch: int = 8) -> np.ndarray:
    """(V, V) float64 FSIMc between every pair of full-resolution versions (piq), diagonal 1.

    FSIM is symmetric, so only the V(V-1)/2 pairs below the diagonal are computed, ``batch`` pairs
    per piq call (its log-Gabor responses take several full-size planes per pair).
    """
    import piq

    versions = _check_versions(versions).clamp(0, 1)
    v = versions.shape[0]
    out = np.eye(v, dtype=np.float64)
    k, l = np.tril_indices(v, -1)
    with torch.no_grad():
        for start in range(0, len(k), batch):
            a, b = k[start:start + batch], l[start:start + batch]
            values = piq.fsim(versions[a], versions[b], data_range=1.0, reduction="none")
            out[a, b] = out[b, a] = values.double().cpu().numpy()
    return out


def content_key(paths: Sequence[str | Path]) -> str:
    """A cache key for one content: SHA-256 over its files' names and bytes, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def cached_fsim_matrix(store: MutableMapping, key: str, versions: torch.Tensor | Callable[[], torch.Tensor],
                       count: int | None = None) -> np.ndarray:
    """The content's FSIM matrix from ``store[key]``, computed and stored there when absent.

    ``versions`` may be a callable so a cache hit never loads the images; ``count`` (V), when given,
    rejects a cached matrix of another size (recomputed and replaced).
    """
    cached = store.get(key) if hasattr(store, "get") else (store[key] if key in store else None)
    if cached is not None:
        cached = np.asarray(cached, dtype=np.float64)
        if cached.ndim == 2 and cached.shape[0] == cached.shape[1] and (count is None or cached.shape[0] == count):
            return cached
    matrix = fsim_matrix(versions() if callable(versions) else versions)
    store[key] = matrix
    return matrix
