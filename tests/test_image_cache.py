"""The HDF5 image cache of a database: byte-exact round trip, stale detection, atomic writes,
the torch Datasets, and `iqa patchify --from-db`."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from db_fixtures import make_clive, make_kadid, make_live, make_spaq, photo, save
from iqa_cli.datasets.cache import (ImageDataset, TableImageDataset, build_image_cache, cache_is_fresh,
                                    load_database_image, open_image_cache, table_fingerprint)
from iqa_cli.datasets.formats import read_database
from iqa_cli.errors import InvalidInputError, StoreError
from iqa_cli.io.images import load_image_uint8
from iqa_cli.io.store import ImageStore, partial_path


@pytest.fixture
def kadid(tmp_path):
    fx = make_kadid(tmp_path / "kadid", refs=("I01", "I02"), types=(1, 10), levels=(1, 5))
    return read_database(fx.root, "kadid10k")


def _no_leftovers(out):
    assert not out.exists() and not partial_path(out).exists()
    assert not out.with_name(out.name + ".lock").exists()


def test_round_trip_is_byte_exact_and_stores_each_file_once(tmp_path, kadid):
    out = tmp_path / "kadid.h5"
    seen = []
    result = build_image_cache(kadid, out, progress=seen.append)
    assert result.built and result.n_rows == len(kadid) == 8
    assert result.n_images == 10 and sum(seen) == 10  # 8 distorted + 2 references, each once
    store = open_image_cache(out, kadid)
    assert store.database == "kadid10k" and store.row_names() == list(kadid.rows["name"])
    for row, (dist, ref) in enumerate(zip(kadid.rows["dist"], kadid.rows["ref"])):
        np.testing.assert_array_equal(store.read_row(row), load_image_uint8(dist))
        np.testing.assert_array_equal(store.read_row(row, "ref"), load_image_uint8(ref))
    assert len(set(store.image_index(np.arange(8), "ref").tolist())) == 2
    batch = store.read_batch([0, 3, 5])
    assert batch.shape == (3, 24, 32, 3) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[1], load_image_uint8(kadid.rows["dist"][3]))


def test_mixed_formats_and_sizes(tmp_path):
    fx = make_clive(tmp_path / "clive")  # .bmp and .JPG
    save(fx.root / "Images" / "10.bmp", photo(3, (17, 29)), "BMP")  # another size
    table = read_database(fx.root, "clive")
    store = ImageStore.open(build_image_cache(table, tmp_path / "c.h5").path)
    assert store.ref_image.tolist() == [-1] * len(table) and store.read_row(0, "ref") is None
    assert store.size(int(store.dist_image[0])) == (17, 29)
    for row, dist in enumerate(table.rows["dist"]):
        np.testing.assert_array_equal(store.read_row(row), load_image_uint8(dist))
    with pytest.raises(ValueError, match="different sizes"):
        store.read_batch([0, 1])


def test_short_side_resizes_like_the_uncached_loader(tmp_path):
    table = read_database(make_spaq(tmp_path / "spaq", size=(30, 40)).root, "spaq")
    assert table.short_side == 512
    out = tmp_path / "spaq.h5"
    result = build_image_cache(table, out, short_side=15)
    assert result.short_side == 15
    store = open_image_cache(out, table, short_side=15)
    image = store.read_row(0)
    assert image.shape == (15, 20, 3)
    np.testing.assert_array_equal(image, load_database_image(table.rows["dist"][0], 15))
    uncached = TableImageDataset(table, short_side=15)
    np.testing.assert_array_equal(uncached[0][1].numpy(), image)
    with pytest.raises(StoreError, match="stale"):
        open_image_cache(out, table)  # the table's own 512 is another resize


def test_datasets_agree_and_survive_pickling_and_workers(tmp_path, kadid):
    import torch

    out = tmp_path / "kadid.h5"
    build_image_cache(kadid, out)
    store = open_image_cache(out, kadid)
    store.read_row(0)  # opens the handle in this process
    cached = ImageDataset(store, "ref", rows=[5, 1])
    direct = TableImageDataset(kadid, "ref", rows=[5, 1])
    assert len(cached) == 2 and cached.sizes().tolist() == [[24, 32], [24, 32]]
    for (r1, a), (r2, b) in zip(cached, direct):
        assert r1 == r2 and a.dtype == torch.uint8 and torch.equal(a, b)
    clone = pickle.loads(pickle.dumps(cached))
    assert clone.store._file is None  # the handle never travels; the copy reopens lazily
    assert torch.equal(clone[0][1], cached[0][1])
    loader = torch.utils.data.DataLoader(ImageDataset(store), batch_size=4, num_workers=2)
    rows, images = zip(*loader)
    assert torch.cat(rows).tolist() == list(range(8))
    np.testing.assert_array_equal(torch.cat(images)[7].numpy(), load_image_uint8(kadid.rows["dist"][7]))


def test_up_to_date_cache_is_reused_and_stale_ones_are_detected(tmp_path, kadid):
    out = tmp_path / "kadid.h5"
    first = build_image_cache(kadid, out)
    stamp = out.stat().st_mtime_ns
    again = build_image_cache(kadid, out)
    assert not again.built and again.fingerprint == first.fingerprint and out.stat().st_mtime_ns == stamp
    assert cache_is_fresh(out, kadid)
    # another table (a subset of rows) is another cache
    with pytest.raises(StoreError) as e:
        open_image_cache(out, kadid.head(4))
    assert "stale" in str(e.value) and "--force" in str(e.value) and "\n" not in str(e.value)
    # a source file changed on disk
    path = kadid.rows["dist"][2]
    save(Path(path), photo(7))
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not cache_is_fresh(out, kadid)
    with pytest.raises(StoreError, match="stale"):
        open_image_cache(out, kadid)
    rebuilt = build_image_cache(kadid, out)
    assert rebuilt.built and rebuilt.fingerprint == table_fingerprint(kadid) != first.fingerprint
    np.testing.assert_array_equal(open_image_cache(out, kadid).read_row(2), photo(7))


def test_failed_build_leaves_nothing_behind(tmp_path, kadid):
    out = tmp_path / "kadid.h5"

    def explode(n):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        build_image_cache(kadid, out, progress=explode)
    _no_leftovers(out)
    # a damaged image is a one-line error, and again no file
    (kadid.root / "images" / "I02_10_05.png").write_bytes(b"not a png")
    with pytest.raises(InvalidInputError) as e:
        build_image_cache(kadid, out)
    assert "I02_10_05.png" in str(e.value) and "\n" not in str(e.value)
    _no_leftovers(out)


def test_a_previous_cache_survives_a_failed_rebuild(tmp_path, kadid):
    out = tmp_path / "kadid.h5"
    build_image_cache(kadid, out)
    before = out.read_bytes()
    with pytest.raises(RuntimeError):
        build_image_cache(kadid, out, force=True, progress=lambda n: (_ for _ in ()).throw(RuntimeError("stop")))
    assert out.read_bytes() == before and not partial_path(out).exists()


def test_foreign_files_and_broken_caches(tmp_path, kadid):
    foreign = tmp_path / "notes.h5"
    foreign.write_text("my notes")
    with pytest.raises(InvalidInputError, match="not an iqa image cache"):
        build_image_cache(kadid, foreign)
    assert foreign.read_text() == "my notes"
    with pytest.raises(StoreError, match="not an HDF5 file"):
        ImageStore.open(foreign)
    with pytest.raises(StoreError, match="no such image cache"):
        ImageStore.open(tmp_path / "none.h5")
    # a patch store is not an image cache
    import h5py

    with h5py.File(tmp_path / "patches.h5", "w") as f:
        f.attrs["iqa_store"] = "patch-store"
    with pytest.raises(StoreError, match="not an iqa image cache"):
        ImageStore.open(tmp_path / "patches.h5")


# -- iqa patchify --from-db ------------------------------------------------------------------------------
def test_cli_builds_the_cache_and_says_which_format(cli, tmp_path):
    fx = make_live(tmp_path / "databaserelease2")
    out = tmp_path / "live.h5"
    result = cli("patchify", "--from-db", fx.root, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["format"] == "live" and doc["detected"] and doc["built"] and doc["n_rows"] == len(fx.rows)
    store = ImageStore.open(out)
    np.testing.assert_array_equal(store.read_row(0), load_image_uint8(fx.root / fx.rows[0]["name"]))
    result = cli("patchify", "--from-db", fx.root, "--format", "live", "--db-option", "dmos=original", "--out", out)
    assert result.exit_code == 0, result.output
    assert "up to date" in result.stdout  # the scores changed, the pixels did not
    result = cli("patchify", "--from-db", fx.root, "--out", out)
    assert "detected format: live" in result.stderr


def test_cli_errors(cli, tmp_path):
    fx = make_kadid(tmp_path / "dbs" / "kadid", refs=("I01",), types=(1,), levels=(1,))
    out = tmp_path / "k.h5"  # outside the inputs: an output inside an input folder is refused first
    result = cli("patchify", "--from-db", fx.root, "--format", "tid2099", "--out", out)
    assert result.exit_code == 1 and "unknown database format 'tid2099'" in result.stderr
    assert result.stderr.count("\n") == 1
    result = cli("patchify", "--from-db", tmp_path / "dbs", "--out", out)
    assert result.exit_code == 1 and "kadid/ inside it holds kadid10k" in result.stderr
    result = cli("patchify", "--from-db", fx.root, "--db", tmp_path / "DB.csv", "--out", out)
    assert result.exit_code == 2 and "--db do not apply to --from-db" in result.stderr
    result = cli("patchify", "--out", out)
    assert result.exit_code == 2 and "--db is required" in result.stderr
    result = cli("patchify", "renders", "--db", "DB.csv", "--out", out, "--format", "live")
    assert result.exit_code == 2 and "apply only to --from-db" in result.stderr
    _no_leftovers(out)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "PA", "1", "CMYK", "I;16", "I", "F"])
def test_uint8_loader_fast_path_equals_the_float_path(tmp_path, mode):
    """load_image_uint8 converts 8-bit files directly; the values must be those of the float loader."""
    from PIL import Image

    from iqa_cli.io.images import load_image_rgba

    rgb = photo(2, (12, 16))
    base = Image.fromarray(rgb)
    if mode in ("I;16", "I", "F"):
        grey = np.asarray(base.convert("L"), dtype=np.float64)
        values = {"I;16": (grey * 257).astype(np.uint16), "I": (grey * 200).astype(np.int32),
                  "F": (grey / 255).astype(np.float32)}[mode]
        img = Image.fromarray(values).convert(mode) if mode == "I;16" else Image.fromarray(values, mode)
    elif mode == "PA":
        img = base.convert("P").convert("PA")
    elif mode == "P":
        img = base.convert("P")
        img.info["transparency"] = 3
    else:
        img = base.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("I;16", "I", "F", "CMYK", "PA", "LA") else "x.png")
    img.save(path)
    expected = (load_image_rgba(path)[..., :3] * 255.0).round().astype(np.uint8)
    got = load_image_uint8(path)
    assert got.dtype == np.uint8 and got.flags.writeable
    np.testing.assert_array_equal(got, expected)
