"""Pristine patch selection, the pristine store, its MVG cache and NIQE's pristine fit.

The selection rules are checked against direct transcriptions of grepq.md / niqe.md written here
(scipy.signal's 2-D convolution, per-patch loops); the store against the patches cut again from
the images; the cache by counting how often the Gaussian is computed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.signal import convolve2d

from iqa_cli.errors import InvalidInputError, StoreError
from iqa_cli.io.patches import (above_fraction_of_max, colourfulness, cut_patches, grid_positions, select_pristine,
                                tile_sharpness)
from iqa_cli.io.store import PatchStore, PristineStore
from iqa_cli.models.mvg import fit_mvg, weights_hash
from iqa_cli.models.niqe import NIQE, niqe_feature_key, niqe_features, save_pristine_model, to_grey
from iqa_cli.pristine import build_pristine_store, fit_pristine_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def textured_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Colour image whose 48-pixel cells differ in texture strength and colour (uint8 (h, w, 3))."""
    out = np.empty((h, w, 3))
    for y in range(0, h, 48):
        for x in range(0, w, 48):
            cell = out[y:y + 48, x:x + 48]
            base = rng.uniform(40, 200, 3) * rng.uniform(0.3, 1.0)
            amplitude = rng.choice([2.0, 10.0, 40.0])
            cell[...] = base + amplitude * rng.standard_normal(cell.shape[:2])[..., None] * rng.uniform(0.5, 1.0, 3)
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder of pristine images: two real photographs (cropped), a textured one, a grey one."""
    from skimage import data

    rng = np.random.default_rng(5)
    folder = tmp_path / "pristine"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(data.astronaut()[:300, :400]).save(folder / "astronaut.png")
    Image.fromarray(data.coffee()[:250, :390]).save(folder / "sub" / "coffee.png")
    Image.fromarray(textured_image(rng, 200, 300)).save(folder / "texture.png")
    Image.fromarray(data.camera()[:200, :200]).save(folder / "camera.png")  # grey: no colourful tile
    return folder


# -- selection rules against transcriptions --------------------------------------------------------

def _window() -> np.ndarray:
    x = np.arange(-3, 4)
    w = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * (7 / 6) ** 2))
    return w / w.sum()


def _sigma_zero(grey: np.ndarray) -> np.ndarray:
    w = _window()
    mu = convolve2d(grey, w, mode="same", boundary="fill", fillvalue=0)
    return np.sqrt(np.abs(convolve2d(grey * grey, w, mode="same", boundary="fill", fillvalue=0) - mu * mu))


def _sigma_replicate(grey: np.ndarray) -> np.ndarray:
    w = _window()
    mu = convolve2d(np.pad(grey, 3, mode="edge"), w, mode="valid")
    return np.sqrt(np.abs(convolve2d(np.pad(grey * grey, 3, mode="edge"), w, mode="valid") - mu * mu))


def _transcribed_selection(rgb: np.ndarray, size: int, t_sharp: float, t_colour: float) -> list[tuple[int, int]]:
    """grepq.md, step by step: non-overlapping tiles; delta = sum of the sigma map (grey 0.2989 R +
    0.587 G + 0.114 B, zero padding); keep delta > t * max; of those, C > t * max C."""
    x = rgb.astype(np.float64) / 255
    grey = 0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    nh, nw = rgb.shape[0] // size, rgb.shape[1] // size
    sigma = _sigma_zero(grey[:nh * size, :nw * size])
    tiles = [(i * size, j * size) for i in range(nh) for j in range(nw)]
    delta = [sigma[y:y + size, x0:x0 + size].sum() for y, x0 in tiles]
    sharp = [t for t, d in zip(tiles, delta) if d > t_sharp * max(delta)]
    colour = []
    for y, x0 in sharp:
        p = x[y:y + size, x0:x0 + size]
        rg = np.abs(p[..., 0] - p[..., 1]).ravel()
        yb = np.abs((p[..., 0] + p[..., 1]) / 2 - p[..., 2]).ravel()
        colour.append(np.sqrt(np.std(rg, ddof=1) ** 2 + np.std(yb, ddof=1) ** 2)
                      + np.sqrt(np.mean(rg) ** 2 + np.mean(yb) ** 2))
    return [t for t, c in zip(sharp, colour) if c > t_colour * max(colour)]


@pytest.mark.parametrize("t_sharp,t_colour", [(0.75, 0.80), (0.5, 0.6), (0.3, 0.9)])
def test_selection_matches_the_transcription(t_sharp, t_colour):
    rng = np.random.default_rng(11)
    for h, w in ((240, 336), (200, 300)):
        rgb = textured_image(rng, h, w)
        sel = select_pristine(rgb, 48, t_sharp, t_colour)
        assert [tuple(p) for p in sel.positions.tolist()] == _transcribed_selection(rgb, 48, t_sharp, t_colour)
        assert sel.n_tiles == (h // 48) * (w // 48)
        assert 0 < len(sel.positions) <= sel.n_sharp < sel.n_tiles


def test_rule_parts():
    rng = np.random.default_rng(12)
    grey = rng.random((150, 200)) * 255
    # NIQE's own rule replicates the borders; GRepQ's pads with zeros: the border tiles differ
    zero, replicate = tile_sharpness(grey, 50, "zero"), tile_sharpness(grey, 50, "replicate")
    np.testing.assert_allclose(zero, [_sigma_zero(grey)[y:y + 50, x:x + 50].sum()
                                      for y, x in grid_positions(150, 200, 50, 50)], rtol=1e-10)
    np.testing.assert_allclose(replicate, [_sigma_replicate(grey)[y:y + 50, x:x + 50].sum()
                                           for y, x in grid_positions(150, 200, 50, 50)], rtol=1e-10)
    assert not np.allclose(zero, replicate)
    patches = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    expected = []
    for p in patches.astype(np.float64) / 255:
        rg, yb = np.abs(p[..., 0] - p[..., 1]), np.abs((p[..., 0] + p[..., 1]) / 2 - p[..., 2])
        expected.append(np.hypot(rg.std(ddof=1), yb.std(ddof=1)) + np.hypot(rg.mean(), yb.mean()))
    np.testing.assert_allclose(colourfulness(patches), expected, rtol=1e-12)
    np.testing.assert_allclose(colourfulness(patches.astype(np.float32) / 255), expected, rtol=1e-6)
    assert above_fraction_of_max(np.array([1.0, 3.0, 4.0]), 0.75).tolist() == [False, False, True]
    assert above_fraction_of_max(np.array([0.0, 0.0]), 0.0).tolist() == [True, True]  # 0: rule off
    assert above_fraction_of_max(np.array([0.0, 0.0]), 0.5).tolist() == [False, False]  # flat: nothing


# -- the store --------------------------------------------------------------------------------------

def test_store_round_trip(photos, tmp_path):
    out = tmp_path / "pristine.h5"
    result = build_pristine_store(photos, out, patch_size=96)
    assert result.built and result.n_images == 4 and result.n_used == 3 and not result.too_small
    store = PristineStore.open(out)
    assert (store.patch_size, store.sharpness, store.colourfulness, store.sharpness_padding) == (96, 0.75, 0.8, "zero")
    assert store.fingerprint == result.fingerprint and store.n_patches == result.n_patches > 0
    table = store.images
    assert table["name"].tolist() == ["astronaut.png", "camera.png", "sub/coffee.png", "texture.png"]
    index = store.patch_index()
    for row in table.itertuples():
        rgb = np.asarray(Image.open(photos / row.name).convert("RGB"))
        sel = select_pristine(rgb, 96)
        rows = slice(row.first, row.first + row.count)
        assert row.count == len(sel.positions) and row.n_tiles == sel.n_tiles and row.n_sharp == sel.n_sharp
        assert (index["image"][rows] == row.Index).all()
        np.testing.assert_array_equal(np.stack([index["y"][rows], index["x"][rows]], 1), sel.positions)
        np.testing.assert_array_equal(store.read_patches(row.first, row.first + row.count),
                                      cut_patches(rgb, sel.positions, 96))
    assert table.set_index("name").loc["camera.png", "count"] == 0  # grey: no colourful tile
    assert sum(len(b) for b in store.iter_patches(batch_size=2)) == store.n_patches
    # unchanged sources: nothing to do; new parameters or a touched image: rebuilt
    assert not build_pristine_store(photos, out, patch_size=96).built
    assert build_pristine_store(photos, out, patch_size=96, colourfulness=0.5).built
    os.utime(photos / "texture.png", ns=(1, 1))
    assert build_pristine_store(photos, out, patch_size=96, colourfulness=0.5).built
    with pytest.raises(StoreError, match="not an iqa patch store"):
        PatchStore.open(out)


def test_mvg_cache_is_reused_and_invalidated(photos, tmp_path):
    out = tmp_path / "pristine.h5"
    build_pristine_store(photos, out, patch_size=96)
    encoder = torch.nn.Linear(96 * 96 * 3, 4)
    calls = []

    def compute(store):
        calls.append(1)
        x = torch.from_numpy(store.read_patches()).reshape(store.n_patches, -1).float() / 255
        with torch.no_grad():
            return fit_mvg(encoder(x))

    store = PristineStore.open(out)
    first = store.mvg("toy", weights_hash(encoder), compute)
    again = PristineStore.open(out).mvg("toy", weights_hash(encoder), compute)  # a new reader finds it
    assert len(calls) == 1 and torch.equal(first.mean, again.mean) and torch.equal(first.cov, again.cov)
    assert first.mean.dtype == torch.float64 and first.mean.shape == (4,)
    with torch.no_grad():
        encoder.weight.add_(0.01)
    changed = store.mvg("toy", weights_hash(encoder), compute)
    assert len(calls) == 2 and not torch.allclose(changed.mean, first.mean)
    assert store.cached_mvgs() == {"toy": weights_hash(encoder)}  # the stale entry was replaced
    assert store.mvg("toy", weights_hash(encoder), compute) is not None and len(calls) == 2
    assert store.n_patches == PristineStore.open(out).n_patches  # the cache left the patches alone


def test_weights_hash_tracks_weights_and_buffers():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    before = weights_hash(net)
    assert weights_hash(net.state_dict()) == before
    net[1].running_mean += 1
    assert weights_hash(net) != before


# -- NIQE's pristine model --------------------------------------------------------------------------

def test_fit_from_folder_is_the_official_estimation(photos):
    """estimatemodelparam.m: per image, blocks with mean sigma > 0.75 x the image's best, then
    nanmean / nancov (complete rows) of their features -- transcribed here with numpy."""
    from iqa_cli.io.patches import sigma_map, tile_sums

    rows = []
    for path in sorted(photos.rglob("*.png")):
        rgb = np.array(Image.open(path).convert("RGB"))
        img = torch.from_numpy(rgb).permute(2, 0, 1)[None].double() / 255
        grey = to_grey(img)[0].numpy()
        features = niqe_features(to_grey(img))[0][0].numpy()
        nh, nw = grey.shape[0] // 96, grey.shape[1] // 96
        sharp = tile_sums(sigma_map(grey[:nh * 96, :nw * 96], "replicate"), 96)
        rows.append(features[sharp > 0.75 * sharp.max()])
    feats = np.concatenate(rows)
    model = fit_pristine_model(photos)
    np.testing.assert_allclose(model.mean.numpy(), np.nanmean(feats, axis=0), rtol=1e-10)
    np.testing.assert_allclose(model.cov.numpy(), np.cov(feats[~np.isnan(feats).any(1)].T), rtol=1e-8, atol=1e-12)


def test_fit_from_store_is_cached_and_replaces_the_official_model(photos, tmp_path):
    out = tmp_path / "pristine.h5"
    build_pristine_store(photos, out, patch_size=96, sharpness=0.5, colourfulness=0.5)
    model = fit_pristine_model(out)
    store = PristineStore.open(out)
    assert store.cached_mvgs() == {"niqe": niqe_feature_key(96)}
    features = niqe_features(to_grey(torch.from_numpy(store.read_patches()).permute(0, 3, 1, 2).double() / 255))[0]
    expected = fit_mvg(features[:, 0])
    assert torch.allclose(model.mean, expected.mean) and torch.allclose(model.cov, expected.cov)
    cached = store.mvg("niqe", niqe_feature_key(96), lambda s: pytest.fail("recomputed a cached Gaussian"))
    assert torch.equal(cached.mean, model.mean)
    saved = save_pristine_model(model, tmp_path / "mine.npz")
    from skimage import data

    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    assert torch.equal(NIQE(pristine=saved)(img), NIQE(pristine=model)(img))
    assert torch.isfinite(NIQE(pristine=model)(img)).all()


# -- bad input --------------------------------------------------------------------------------------

def test_no_usable_patch_is_one_line_error(tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    Image.fromarray(np.zeros((60, 200, 3), np.uint8)).save(folder / "thin.png")
    out = tmp_path / "p.h5"
    with pytest.raises(InvalidInputError, match=r"no usable pristine patch \(all 1 image\(s\) are smaller than 96x96"):
        build_pristine_store(folder, out)
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(folder / "flat.png")
    with pytest.raises(InvalidInputError, match="no usable pristine patch .*1 of 2 image.* smaller"):
        build_pristine_store(folder, out)
    assert not out.exists() and not Path(f"{out}.partial").exists()
    with pytest.raises(InvalidInputError, match="no usable pristine patch"):
        fit_pristine_model(folder)
    (tmp_path / "none").mkdir()
    with pytest.raises(InvalidInputError, match="no image files"):
        build_pristine_store(tmp_path / "none", out)
    with pytest.raises(InvalidInputError, match="no such folder"):
        build_pristine_store(tmp_path / "missing", out)
    with pytest.raises(StoreError, match="no such pristine store"):
        PristineStore.open(tmp_path / "missing.h5")


def test_cli(cli, photos, tmp_path):
    out = tmp_path / "p.h5"
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(photos / "tiny.png")
    r = cli("patchify", "--pristine", photos, "--out", out, "--json", "--sharpness", "0.6")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["built"] and doc["sharpness"] == 0.6 and doc["colourfulness"] == 0.8 and doc["too_small"] == ["tiny.png"]
    assert "smaller than 96x96 skipped: tiny.png" in r.stderr
    assert PristineStore.open(out).n_patches == doc["n_patches"]
    r = cli("patchify", "--pristine", photos, "--out", out, "--sharpness", "0.6")
    assert r.exit_code == 0 and "up to date" in r.stdout
    r = cli("patchify", "--pristine", photos, "--out", out, "--stride", "32")
    assert r.exit_code == 1 and "--stride do not apply to --pristine" in r.stderr and "Traceback" not in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(empty / "a.png")
    r = cli("patchify", "--pristine", empty, "--out", tmp_path / "q.h5")
    assert r.exit_code == 1 and "no usable pristine patch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("patchify", "renders", "--out", tmp_path / "r.h5")
    assert r.exit_code == 2 and "--db" in r.stderr
    r = cli("patchify", "renders", "--db", "db.csv", "--out", tmp_path / "r.h5", "--sharpness", "0.5")
    assert r.exit_code == 2 and "--pristine stores only" in r.stderr
