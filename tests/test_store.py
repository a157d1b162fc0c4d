"""HDF5 patch store (iqa_cli.io.store): schema, byte-exact round trip, row reads, pickling, errors."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from iqa_cli.errors import StoreError
from iqa_cli.io.store import PatchStore, StoreWriter, partial_path

S = 16


def _write_store(path, rng, n_models=2, stim_counts=((5, 5, 5), (3, 3)), flush_patches=1024, views=("",)):
    """Random store; returns what was written (for byte-exact comparison)."""
    written = {"distorted": [], "reference": [], "stimuli": [], "ref": []}
    with StoreWriter(path, patch_size=S, stride=S, min_foreground=0.6, background="auto", fingerprint="f00d",
                     source="renders", flush_patches=flush_patches) as w:
        for m in range(n_models):
            counts = stim_counts[m]
            n_ref = max(counts, default=0)
            ref = rng.integers(0, 256, (n_ref, S, S, 3), dtype=np.uint8)
            ref_first = w.n_reference
            mi = w.add_model(f"model{m}", ref, views=views)
            written["reference"].append(ref)
            for j, n in enumerate(counts):
                patches = rng.integers(0, 256, (n, S, S, 3), dtype=np.uint8)
                w.add_stimulus(mi, f"model{m}_s{j}", patches, view=np.zeros(n), number=np.arange(n),
                               y=np.arange(n) * S, x=np.full(n, 3), ref=np.arange(n), mos=0.1 * j,
                               split="train" if j else "test")
                written["distorted"].append(patches)
                written["ref"].append(ref_first + np.arange(n))
                written["stimuli"].append((f"model{m}", f"model{m}_s{j}", n))
        w.commit()
    return {k: (np.concatenate(v) if k in ("distorted", "reference", "ref") else v) for k, v in written.items()}


@pytest.fixture
def store_path(tmp_path, rng):
    path = tmp_path / "db.h5"
    return path, _write_store(path, rng)


def test_schema_layout_exact(store_path):
    path, _ = store_path
    with h5py.File(path, "r") as f:
        assert f.attrs["iqa_store"] == "patch-store" and int(f.attrs["schema_version"]) == 1
        assert int(f.attrs["patch_size"]) == S and int(f.attrs["stride"]) == S
        assert float(f.attrs["min_foreground"]) == 0.6
        assert f.attrs["background"] == "auto" and f.attrs["fingerprint"] == "f00d" and f.attrs["source"] == "renders"
        d = f["distorted"]
        assert d.dtype == np.uint8 and d.shape == (21, S, S, 3) and d.chunks[0] == 64 and d.compression is None
        assert f["reference"].shape == (8, S, S, 3)
        for name in ("stimulus", "view", "number", "y", "x", "ref"):
            assert f[f"patch_index/{name}"].shape == (21,)
        assert f["patch_index/view"].dtype == np.int16 and f["patch_index/ref"].dtype == np.int64
        for name in ("model", "stimulus", "split", "mos", "first", "count", "model_index", "flag"):
            assert f[f"stimuli/{name}"].shape == (5,)
        assert f["stimuli/mos"].dtype == np.float64 and f["stimuli/model_index"].dtype == np.int32
        for name in ("name", "ref_first", "ref_count", "n_views"):
            assert f[f"models/{name}"].shape == (2,)


def test_round_trip_byte_exact(store_path):
    path, want = store_path
    store = PatchStore.open(path)
    assert (store.n_patches, store.n_reference, store.patch_size, store.stride) == (21, 8, S, S)
    assert store.fingerprint == "f00d" and store.source == "renders" and store.min_foreground == 0.6
    assert np.array_equal(store.read_distorted(0, 21), want["distorted"])
    assert np.array_equal(store.read_reference(0, 8), want["reference"])
    assert np.array_equal(store.read_distorted(4, 9), want["distorted"][4:9])
    assert np.array_equal(store.patch_refs(0, 21), want["ref"])
    st = store.stimuli
    assert list(st.columns) == ["model", "stimulus", "split", "mos", "first", "count", "model_index", "flag"]
    assert [(r.model, r.stimulus, r.count) for r in st.itertuples()] == want["stimuli"]
    assert st["first"].tolist() == [0, 5, 10, 15, 18]
    assert st["model_index"].tolist() == [0, 0, 0, 1, 1]
    assert st["split"].tolist() == ["test", "train", "train", "test", "train"]
    np.testing.assert_allclose(st["mos"], [0, 0.1, 0.2, 0, 0.1])
    assert (st["flag"] == "").all() and store.has_mos
    mo = store.models
    assert list(mo.columns) == ["name", "ref_first", "ref_count", "n_views"]
    assert mo["ref_first"].tolist() == [0, 5] and mo["ref_count"].tolist() == [5, 3]
    idx = store.patch_index(15, 21)
    assert idx["stimulus"].tolist() == [3, 3, 3, 4, 4, 4]
    assert idx["number"].tolist() == [0, 1, 2, 0, 1, 2] and idx["y"].tolist() == [0, 16, 32, 0, 16, 32]
    assert store.view_names(0) == [""]
    store.close()


def test_read_rows_any_order_with_repeats_and_gaps(tmp_path, rng):
    path = tmp_path / "big.h5"
    want = _write_store(path, rng, n_models=1, stim_counts=((300,),), flush_patches=50)
    with PatchStore.open(path) as store:
        for rows in ([5, 0, 299, 5, 150, 151], [0, 1, 2], [298], list(range(0, 300, 7))):
            got = store.read_distorted_rows(np.array(rows))
            assert np.array_equal(got, want["distorted"][rows])
        assert store.read_distorted_rows(np.array([], int)).shape == (0, S, S, 3)
        assert np.array_equal(store.read_reference_rows(np.array([3, 1])), want["reference"][[3, 1]])
        with pytest.raises(IndexError):
            store.read_distorted_rows(np.array([300]))
        with pytest.raises(IndexError):
            store.read_distorted(0, 301)


def test_open_is_lazy_and_pickle_drops_handle(store_path):
    path, want = store_path
    store = PatchStore.open(path)
    assert store._file is None  # validated, but nothing held open
    store.read_distorted(0, 1)
    assert store._file is not None
    clone = pickle.loads(pickle.dumps(store))
    assert clone._file is None
    assert np.array_equal(clone.read_distorted(0, 21), want["distorted"])
    clone.close()
    store.close()
    assert store._file is None


def test_writer_flushes_incrementally(tmp_path, rng):
    path = tmp_path / "inc.h5"
    with StoreWriter(path, patch_size=S, stride=S, min_foreground=0.6, background="auto", fingerprint="x",
                     source="renders", flush_patches=10) as w:
        m = w.add_model("m", rng.integers(0, 256, (4, S, S, 3), dtype=np.uint8))
        for j in range(5):
            w.add_stimulus(m, f"s{j}", rng.integers(0, 256, (4, S, S, 3), dtype=np.uint8), view=np.zeros(4),
                           number=np.arange(4), y=np.zeros(4), x=np.zeros(4), ref=np.arange(4))
        assert w._file["distorted"].shape[0] >= 12  # already on disk, not held in memory
        assert w._buffered["distorted"] < 10
        assert partial_path(path).exists() and not path.exists()
        w.commit()
    assert path.exists() and not partial_path(path).exists()
    assert PatchStore.open(path).n_patches == 20


def test_writer_failure_leaves_nothing(tmp_path, rng):
    path = tmp_path / "fail.h5"
    with pytest.raises(RuntimeError):
        with StoreWriter(path, patch_size=S, stride=S, min_foreground=0.6, background="auto", fingerprint="x",
                         source="renders") as w:
            w.add_model("m", rng.integers(0, 256, (2, S, S, 3), dtype=np.uint8))
            raise RuntimeError("boom")
    assert not path.exists() and not partial_path(path).exists()


def test_stale_partial_is_discarded(tmp_path, rng):
    path = tmp_path / "db.h5"
    partial_path(path).write_bytes(b"half a store from a killed run")
    want = _write_store(path, rng)
    assert not partial_path(path).exists()
    assert np.array_equal(PatchStore.open(path).read_distorted(0, 21), want["distorted"])


def test_empty_store(tmp_path):
    path = tmp_path / "empty.h5"
    with StoreWriter(path, patch_size=S, stride=S, min_foreground=0.6, background="auto", fingerprint="x",
                     source="renders") as w:
        m = w.add_model("m", np.zeros((0, S, S, 3), np.uint8))
        w.add_stimulus(m, "s", np.zeros((0, S, S, 3), np.uint8), view=[], number=[], y=[], x=[], ref=[],
                       flag="no-foreground")
        w.commit()
    store = PatchStore.open(path)
    assert store.n_patches == 0 and store.stimuli["flag"].tolist() == ["no-foreground"]
    assert store.stimuli["count"].tolist() == [0] and not store.has_mos


# -- errors: each names the file and the fix ----------------------------------------------------

def test_open_missing_and_folder(tmp_path):
    with pytest.raises(StoreError, match="no such patch store.*iqa patchify"):
        PatchStore.open(tmp_path / "nope.h5")
    with pytest.raises(StoreError, match="is a folder"):
        PatchStore.open(tmp_path)


def test_open_not_hdf5(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_text("model,stimulus\n")
    with pytest.raises(StoreError, match=r"bad\.h5: not an HDF5 file.*iqa patchify --force"):
        PatchStore.open(bad)


def test_open_truncated_store(store_path):
    path, _ = store_path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(StoreError, match="iqa patchify --force") as exc:
        PatchStore.open(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_open_foreign_hdf5(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.zeros((2, 3, 96, 96), np.float32))
    with pytest.raises(StoreError, match="foreign.h5: HDF5 file is not an iqa patch store"):
        PatchStore.open(path)


def test_open_other_schema_version(store_path):
    path, _ = store_path
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 2
    with pytest.raises(StoreError, match="schema version 2, this iqa reads version 1; rebuild it with iqa patchify"):
        PatchStore.open(path)


def test_open_incomplete_store(store_path):
    path, _ = store_path
    with h5py.File(path, "a") as f:
        del f["patch_index/ref"]
    with pytest.raises(StoreError, match=r"incomplete patch store \(missing patch_index/ref\)"):
        PatchStore.open(path)
