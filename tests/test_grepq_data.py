"""GRepQ's training-data pieces: fragment views (shapes, seeding, shared positions, flips,
upsampling) and the cached FSIM similarity matrix (piq)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iqa_cli.datasets.grepq import (
    cached_fsim_matrix,
    content_key,
    cut_fragments,
    fragment_views,
    fsim_matrix,
    sample_fragment_layout,
    upsample_for_fragments,
)
from iqa_cli.errors import InvalidInputError


def versions_of(base: torch.Tensor, count: int = 3) -> torch.Tensor:
    """Versions that differ by a known per-version factor, so shared positions are checkable."""
    return torch.stack([base * (k + 1) / count for k in range(count)])


def test_fragment_views_shapes_seeding_and_shared_positions():
    torch.manual_seed(0)
    versions = versions_of(torch.rand(3, 260, 300))
    anchor, augmented = fragment_views(versions, rng=42)
    assert anchor.shape == augmented.shape == (3, 3, 224, 224)
    again = fragment_views(versions, rng=np.random.default_rng(42))
    assert torch.equal(anchor, again[0]) and torch.equal(augmented, again[1])
    other = fragment_views(versions, rng=43)
    assert not torch.equal(anchor, other[0])
    for view in (anchor, augmented):  # the same pieces (and flips) in every version
        for k in range(3):
            torch.testing.assert_close(view[k], view[2] * (k + 1) / 3)
    assert not torch.equal(anchor, augmented)


def test_layout_pieces_lie_in_their_cells_and_flips_are_shared():
    rng = np.random.default_rng(1)
    h, w = 250, 330
    for _ in range(20):
        layout = sample_fragment_layout(h, w, rng)
        cell_h, cell_w = h // 7, w // 7
        rows, cols = np.arange(7)[:, None], np.arange(7)[None, :]
        assert (layout.ys >= rows * cell_h).all() and (layout.ys + 32 <= (rows + 1) * cell_h).all()
        assert (layout.xs >= cols * cell_w).all() and (layout.xs + 32 <= (cols + 1) * cell_w).all()
    image = torch.arange(2 * 3 * h * w, dtype=torch.float32).reshape(2, 3, h, w)
    layout = sample_fragment_layout(h, w, rng)
    plain = cut_fragments(image, layout)
    i, j = 2, 5  # piece (i, j) of the view is the image at that cell's corner
    y, x = layout.ys[i, j], layout.xs[i, j]
    assert torch.equal(plain[:, :, 32 * i:32 * i + 32, 32 * j:32 * j + 32], image[:, :, y:y + 32, x:x + 32])
    flips = [sample_fragment_layout(h, w, np.random.default_rng(s), flip=True) for s in range(12)]
    assert {(f.flip_h, f.flip_v) for f in flips} == {(False, False), (False, True), (True, False), (True, True)}
    both = next(f for f in flips if f.flip_h and f.flip_v)
    assert torch.equal(cut_fragments(image, both), cut_fragments(image, type(both)(both.ys, both.xs, 32)).flip((2, 3)))


def test_small_images_are_upsampled_first():
    small = torch.rand(2, 3, 100, 150)
    up = upsample_for_fragments(small)
    assert up.shape == (2, 3, 224, 336) and float(up.min()) >= 0 and float(up.max()) <= 1
    anchor, augmented = fragment_views(small, rng=0)
    assert anchor.shape == (2, 3, 224, 224)
    assert upsample_for_fragments(torch.rand(1, 3, 224, 230)).shape == (1, 3, 224, 230)  # large enough: unchanged
    with pytest.raises(InvalidInputError, match="smaller than the 32x32 pieces"):
        sample_fragment_layout(100, 300, np.random.default_rng(0))


def test_fsim_matrix_and_its_cache(tmp_path):
    import piq

    torch.manual_seed(2)
    base = torch.rand(1, 3, 72, 80)
    versions = torch.cat([base, (base + 0.1 * torch.randn_like(base)).clamp(0, 1),
                          torch.nn.functional.avg_pool2d(base, 3, 1, 1), (base * 0.7).clamp(0, 1)])
    matrix = fsim_matrix(versions, batch=2)
    assert matrix.shape == (4, 4) and np.allclose(np.diag(matrix), 1) and np.allclose(matrix, matrix.T)
    for k, l in ((1, 0), (3, 2), (3, 0)):
        assert matrix[k, l] == pytest.approx(float(piq.fsim(versions[k:k + 1], versions[l:l + 1], data_range=1.0)),
                                             rel=1e-6)

    store: dict = {}
    calls = []

    def load():
        calls.append(1)
        return versions

    first = cached_fsim_matrix(store, "content-a", load, count=4)
    second = cached_fsim_matrix(store, "content-a", load, count=4)
    assert len(calls) == 1 and np.array_equal(first, second) and np.array_equal(store["content-a"], matrix)
    store["content-b"] = np.eye(3)  # a stale entry of another size is recomputed
    assert cached_fsim_matrix(store, "content-b", load, count=4).shape == (4, 4) and len(calls) == 2

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    key = content_key([a, b])
    assert key == content_key([a, b]) != content_key([b, a])
    b.write_bytes(b"changed")
    assert content_key([a, b]) != key
