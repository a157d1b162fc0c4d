"""`iqa patchify`: renders / published patches -> patch store; no-op and rebuild; every documented error."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from iqa_cli.datasets.mesh_db import patchify as patchify_lib
from iqa_cli.errors import InvalidInputError
from iqa_cli.io.patches import PatchSpec, grid_positions
from iqa_cli.io.store import PatchStore, partial_path
from mesh_fixtures import make_patch_db, make_render_db, object_mask, save_png


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"))[..., :3]


def _known_tiles(seed: int, size=(192, 256), s=64, stride=64, thr=0.6) -> list[list[int]]:
    """The tiles a correct selection keeps, from the generator's own object mask."""
    mask = object_mask(size, seed)
    return [[int(y), int(x)] for y, x in grid_positions(*size, s, stride) if mask[y:y + s, x:x + s].mean() >= thr]


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _assert_failed(result, *fragments: str, out: Path | None = None) -> None:
    assert result.exit_code == 1, result.output
    err = result.stderr
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in err, err
    if out is not None:
        assert not out.exists() and not partial_path(out).exists()


@pytest.fixture
def db(tmp_path):
    renders, csv_path = make_render_db(tmp_path / "db")
    return renders, csv_path, tmp_path / "store.h5"


# -- building ----------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [True, False])
def test_build_tiles_positions_and_reference_once(cli, tmp_path, alpha):
    renders, csv_path = make_render_db(tmp_path / "db", n_models=2, n_stimuli_per_model=3, alpha=alpha)
    out = tmp_path / "store.h5"
    r = cli("patchify", renders, "--db", csv_path, "--out", out)
    assert r.exit_code == 0, r.output
    assert "wrote" in r.stdout and not partial_path(out).exists()
    with PatchStore.open(out) as store:
        st, mo = store.stimuli, store.models
        assert mo["name"].tolist() == ["m0", "m1"] and mo["n_views"].tolist() == [1, 1]
        assert st["stimulus"].tolist() == [f"m{i}_s{j}" for i in range(2) for j in range(3)]
        np.testing.assert_allclose(st["mos"], [0.3, 0.6, 0.9] * 2, atol=1e-6)
        # reference patches stored once per model, contiguous; stimuli contiguous and consecutive
        tiles = [_known_tiles(0 * 1000 + i * 10) for i in range(2)]
        assert mo["ref_count"].tolist() == [len(t) for t in tiles] and store.n_reference == sum(map(len, tiles))
        assert mo["ref_first"].tolist() == [0, len(tiles[0])]
        assert st["count"].tolist() == [len(tiles[0])] * 3 + [len(tiles[1])] * 3
        assert st["first"].tolist() == list(np.cumsum([0] + st["count"].tolist()[:-1]))
        assert store.n_patches == 3 * sum(map(len, tiles))
        idx = store.patch_index(0, store.n_patches)
        dist, ref = store.read_distorted(0, store.n_patches), store.read_reference(0, store.n_reference)
        for row in st.itertuples():
            sl = slice(row.first, row.first + row.count)
            yx = np.stack([idx["y"][sl], idx["x"][sl]], 1).tolist()
            assert yx == tiles[row.model_index]  # exact expected tile set, row-major
            assert idx["number"][sl].tolist() == list(range(row.count))
            assert (idx["stimulus"][sl] == row.Index).all() and (idx["view"][sl] == 0).all()
            ref_img = _png(renders / "references" / f"{row.model}.png")
            stim_img = _png(renders / "stimuli" / f"{row.stimulus}.png")
            for k, (y, x) in zip(range(row.first, row.first + row.count), yx):
                assert np.array_equal(dist[k], stim_img[y:y + 64, x:x + 64])  # same tile from the distorted
                assert np.array_equal(ref[idx["ref"][k]], ref_img[y:y + 64, x:x + 64])  # and its reference


def test_alpha_and_flat_background_select_same_tiles(tmp_path):
    stores = []
    for alpha in (True, False):
        renders, csv_path = make_render_db(tmp_path / f"db{alpha}", alpha=alpha, seed=4)
        stores.append(patchify_lib(renders, csv_path, tmp_path / f"s{alpha}.h5"))
    with PatchStore.open(stores[0].store) as a, PatchStore.open(stores[1].store) as b:
        ia, ib = a.patch_index(0, a.n_patches), b.patch_index(0, b.n_patches)
        assert np.array_equal(ia["y"], ib["y"]) and np.array_equal(ia["x"], ib["x"]) and a.n_patches > 0


def test_explicit_background_and_stride(cli, tmp_path):
    renders, csv_path = make_render_db(tmp_path / "db", n_models=1, alpha=False)
    out = tmp_path / "s.h5"
    r = cli("patchify", renders, "--db", csv_path, "--out", out, "--background", "255,255,255", "--stride", "32",
            "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["background"] == "255,255,255" and doc["stride"] == 32 and doc["built"] is True
    assert doc["n_reference"] == len(_known_tiles(0, stride=32)) > len(_known_tiles(0))


def test_split_and_no_mos(cli, tmp_path):
    renders, csv_path = make_render_db(tmp_path / "db", n_models=1, with_mos=False)
    rows = _csv_rows(csv_path)
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "stimulus", "split"])
        for k, row in enumerate(rows):
            w.writerow([row["model"], row["stimulus"], "test" if k == 0 else "train"])
    out = tmp_path / "s.h5"
    assert cli("patchify", renders, "--db", csv_path, "--out", out).exit_code == 0
    with PatchStore.open(out) as store:
        assert store.stimuli["split"].tolist() == ["test", "train", "train"]
        assert not store.has_mos and store.stimuli["mos"].isna().all()


def test_multi_view(cli, tmp_path):
    renders, csv_path = make_render_db(tmp_path / "db", n_models=2, n_stimuli_per_model=2, views=3)
    out, counts = tmp_path / "s.h5", tmp_path / "counts.csv"
    r = cli("patchify", renders, "--db", csv_path, "--out", out, "--counts-csv", counts)
    assert r.exit_code == 0, r.output
    with PatchStore.open(out) as store:
        mo, st = store.models, store.stimuli
        assert mo["n_views"].tolist() == [3, 3] and store.view_names(1) == ["vp1", "vp2", "vp3"]
        per_view = [[_known_tiles(i * 10 + v) for v in range(3)] for i in range(2)]
        assert mo["ref_count"].tolist() == [sum(map(len, pv)) for pv in per_view]
        idx = store.patch_index(0, store.n_patches)
        dist = store.read_distorted(0, store.n_patches)
        ref = store.read_reference(0, store.n_reference)
        for row in st.itertuples():
            sl = slice(row.first, row.first + row.count)
            views = idx["view"][sl].tolist()
            assert views == sorted(views)  # view-major
            for v in range(3):
                sel = np.flatnonzero(idx["view"][sl] == v) + row.first
                assert np.stack([idx["y"][sel], idx["x"][sel]], 1).tolist() == per_view[row.model_index][v]
                assert idx["number"][sel].tolist() == list(range(len(sel)))
                img = _png(renders / "stimuli" / row.stimulus / f"vp{v + 1}.png")
                ref_img = _png(renders / "references" / row.model / f"vp{v + 1}.png")
                for k in sel:
                    y, x = idx["y"][k], idx["x"][k]
                    assert np.array_equal(dist[k], img[y:y + 64, x:x + 64])
                    assert np.array_equal(ref[idx["ref"][k]], ref_img[y:y + 64, x:x + 64])
    got = _csv_rows(counts)
    assert list(got[0]) == ["model", "stimulus", "MOS", "nbPatchesVP1", "nbPatchesVP2", "nbPatchesVP3",
                            "nbPatchesVP4"]
    for row in got:
        pv = per_view[int(row["model"][1:])]
        assert [int(row[f"nbPatchesVP{v}"]) for v in range(1, 5)] == [len(pv[0]), len(pv[1]), len(pv[2]), 0]


def test_counts_csv_renders(cli, db, tmp_path):
    renders, csv_path, out = db
    counts = tmp_path / "counts.csv"
    assert cli("patchify", renders, "--db", csv_path, "--out", out, "--counts-csv", counts).exit_code == 0
    rows = _csv_rows(counts)
    with PatchStore.open(out) as store:
        st = store.stimuli
        assert [r["stimulus"] for r in rows] == st["stimulus"].tolist()
        assert [int(r["nbPatchesVP1"]) for r in rows] == st["count"].tolist()
        assert [int(r["nbPatchesVP2"]) for r in rows] == [0] * len(st)
        np.testing.assert_allclose([float(r["MOS"]) for r in rows], st["mos"])


def test_from_patches_import(cli, tmp_path):
    root, csv_path = make_patch_db(tmp_path / "pub", counts={"bunny": [4, 4, 4], "dragon": [2, 2]}, patch_size=32)
    out, counts = tmp_path / "s.h5", tmp_path / "counts.csv"
    r = cli("patchify", "--from-patches", root, "--db", csv_path, "--out", out, "--counts-csv", counts, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["source"] == "patches" and doc["n_patches"] == 16 and doc["n_reference"] == 6
    ref_dir = root / "References_patches_withVP_threth0.6"
    stim_dir = root / "PlaylistsStimuli_patches_withVP_threth0.6"
    with PatchStore.open(out) as store:
        assert store.patch_size == 32 and store.stride == -1 and store.min_foreground == 0.6
        st, mo = store.stimuli, store.models
        assert mo["name"].tolist() == ["bunny", "dragon"] and mo["ref_count"].tolist() == [4, 2]
        np.testing.assert_allclose(st["mos"], [0.1, 0.3, 0.5, 0.1, 0.3])
        idx = store.patch_index(0, store.n_patches)
        assert (idx["y"] == -1).all() and (idx["x"] == -1).all() and (idx["view"] == 0).all()
        dist, ref = store.read_distorted(0, 16), store.read_reference(0, 6)
        for row in st.itertuples():
            for p in range(1, row.count + 1):
                k = row.first + p - 1
                assert idx["number"][k] == p - 1
                assert np.array_equal(dist[k], _png(stim_dir / f"{row.stimulus}_P{p}.png"))
                assert np.array_equal(ref[idx["ref"][k]], _png(ref_dir / f"{row.model}_Ref_P{p}.png"))
    rows = _csv_rows(counts)
    assert [int(r["nbPatchesVP1"]) for r in rows] == [4, 4, 4, 2, 2]
    # re-run: no-op
    r = cli("patchify", "--from-patches", root, "--db", csv_path, "--out", out)
    assert r.exit_code == 0 and "up to date" in r.stdout


def test_from_patches_missing_files_and_bad_options(cli, tmp_path):
    root, csv_path = make_patch_db(tmp_path / "pub", counts={"bunny": [3, 3]}, patch_size=16)
    out = tmp_path / "s.h5"
    r = cli("patchify", "--from-patches", root, "--db", csv_path, "--out", out, "--patch-size", "32")
    _assert_failed(r, "--patch-size do not apply to --from-patches", out=out)
    r = cli("patchify", root, "--from-patches", root, "--db", csv_path, "--out", out)
    _assert_failed(r, "give RENDERS or --from-patches ROOT, not both", out=out)
    (root / "References_patches_withVP_threth0.6" / "bunny_Ref_P2.png").unlink()
    (root / "PlaylistsStimuli_patches_withVP_threth0.6" / "bunny_simpL1_qp8_P3.png").unlink()
    r = cli("patchify", "--from-patches", root, "--db", csv_path, "--out", out)
    _assert_failed(r, "2 patch file(s) missing", "bunny_Ref_P2.png", "bunny_simpL1_qp8_P3.png", out=out)


# -- up to date / rebuild ----------------------------------------------------------------------

def test_fingerprint_noop_and_rebuilds(cli, db):
    renders, csv_path, out = db
    assert cli("patchify", renders, "--db", csv_path, "--out", out).exit_code == 0
    stat0 = out.stat()
    fp0 = PatchStore.open(out).fingerprint
    r = cli("patchify", renders, "--db", csv_path, "--out", out, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["built"] is False and json.loads(r.stdout)["n_read"] == 0
    r = cli("patchify", renders, "--db", csv_path, "--out", out)
    assert "is up to date" in r.stdout and out.stat().st_mtime_ns == stat0.st_mtime_ns
    # --force rebuilds with the same fingerprint
    r = cli("patchify", renders, "--db", csv_path, "--out", out, "--force", "--json")
    assert json.loads(r.stdout)["built"] is True and PatchStore.open(out).fingerprint == fp0
    # a changed parameter rebuilds
    r = cli("patchify", renders, "--db", csv_path, "--out", out, "--min-foreground", "0.3", "--json")
    doc = json.loads(r.stdout)
    assert doc["built"] is True and doc["min_foreground"] == 0.3 and doc["fingerprint"] != fp0
    fp1 = doc["fingerprint"]
    # a changed render (content, size and mtime) rebuilds and the new pixels are stored
    stim = renders / "stimuli" / "m0_s0.png"
    img = np.asarray(Image.open(stim)).copy()
    img[..., :3] = 255 - img[..., :3]
    save_png(stim, img)
    os.utime(stim, ns=(stat0.st_mtime_ns + 10**9, stat0.st_mtime_ns + 10**9))
    r = cli("patchify", renders, "--db", csv_path, "--out", out, "--min-foreground", "0.3", "--json")
    doc = json.loads(r.stdout)
    assert doc["built"] is True and doc["fingerprint"] != fp1
    with PatchStore.open(out) as store:
        y, x = store.patch_index(0, 1)["y"][0], store.patch_index(0, 1)["x"][0]
        assert np.array_equal(store.read_distorted(0, 1)[0], img[y:y + 64, x:x + 64, :3])
    # a changed CSV (MOS) rebuilds
    text = csv_path.read_text().replace("0.300000", "0.250000")
    csv_path.write_text(text)
    r = cli("patchify", renders, "--db", csv_path, "--out", out, "--min-foreground", "0.3", "--json")
    assert json.loads(r.stdout)["built"] is True
    assert PatchStore.open(out).stimuli["mos"].iloc[0] == 0.25


def test_store_of_other_schema_is_rebuilt(cli, db):
    renders, csv_path, out = db
    assert cli("patchify", renders, "--db", csv_path, "--out", out).exit_code == 0
    with h5py.File(out, "a") as f:
        f.attrs["schema_version"] = 99
    r = cli("patchify", renders, "--db", csv_path, "--out", out, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["built"] is True
    assert PatchStore.open(out).schema_version == 1


def test_foreign_out_file_is_not_overwritten(cli, db):
    renders, csv_path, out = db
    with h5py.File(out, "w") as f:
        f.create_dataset("data", data=np.arange(3))
    before = out.read_bytes()
    r = cli("patchify", renders, "--db", csv_path, "--out", out)
    assert r.exit_code == 1 and "exists and is not an iqa patch store" in r.stderr and "--force" in r.stderr
    assert out.read_bytes() == before
    r = cli("patchify", renders, "--db", csv_path, "--out", out, "--force")
    assert r.exit_code == 0 and PatchStore.open(out).n_patches > 0


# -- interrupted runs --------------------------------------------------------------------------

def test_stale_partial_from_killed_run_is_redone(cli, db):
    renders, csv_path, out = db
    partial_path(out).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # a half-written file
    r = cli("patchify", renders, "--db", csv_path, "--out", out)
    assert r.exit_code == 0, r.output
    assert not partial_path(out).exists() and PatchStore.open(out).n_patches > 0


_KILL_SCRIPT = """
import os, signal, sys
from iqa_cli.io import store
original = store.StoreWriter.add_stimulus
calls = [0]
def add_stimulus(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 3:  # mid-write: some patches already on disk
        self._flush("distorted")
        self._file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *args, **kwargs)
store.StoreWriter.add_stimulus = add_stimulus
from iqa_cli.cli.app import main
sys.argv = ["iqa", "patchify", *sys.argv[1:]]
main()
"""


def test_killed_run_leaves_no_store_and_rerun_finishes(cli, db):
    renders, csv_path, out = db
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(renders), "--db", str(csv_path), "--out", str(out)],
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not out.exists() and partial_path(out).exists()  # killed: only the partial file, never a store
    r = cli("patchify", renders, "--db", csv_path, "--out", out)
    assert r.exit_code == 0, r.output
    assert "wrote" in r.stdout and not partial_path(out).exists()
    with PatchStore.open(out) as store:
        assert len(store.stimuli) == 6 and store.n_patches == int(store.stimuli["count"].sum()) > 0


@pytest.mark.skipif(os.name != "posix", reason="writer locks are advisory flock() locks, POSIX only")
def test_second_writer_of_the_same_store_is_refused_and_leaves_the_first_alone(cli, db):
    from iqa_cli.io.store import StoreWriter

    renders, csv_path, out = db
    first = StoreWriter(out, patch_size=64, stride=64, min_foreground=0.6, background="auto", fingerprint="x",
                        source="renders")
    first.open()  # another run, mid-write
    try:
        r = cli("patchify", renders, "--db", csv_path, "--out", out)
        assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.output
        assert "another iqa patchify is writing it right now" in r.stderr and "store.h5.lock" in r.stderr
        assert partial_path(out).exists() and first._file.id.valid  # its partial file was not deleted
    finally:
        first.abort()
    assert not partial_path(out).exists() and not out.with_name("store.h5.lock").exists()
    r = cli("patchify", renders, "--db", csv_path, "--out", out)  # once it is gone, a run goes through
    assert r.exit_code == 0, r.output
    assert not out.with_name("store.h5.lock").exists() and PatchStore.open(out).n_patches > 0


def test_writer_that_fails_to_open_leaves_no_lock_behind(db, monkeypatch):
    from iqa_cli.io import store as store_module

    _, _, out = db

    def refuse(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store_module.h5py, "File", refuse)
    with pytest.raises(OSError, match="disk full"):
        with store_module.StoreWriter(out, patch_size=64, stride=64, min_foreground=0.6, background="auto",
                                      fingerprint="x", source="renders"):
            pass
    assert not out.with_name("store.h5.lock").exists() and not partial_path(out).exists()
    monkeypatch.undo()
    with store_module.StoreWriter(out, patch_size=64, stride=64, min_foreground=0.6, background="auto",
                                  fingerprint="x", source="renders") as writer:  # the lock is free again
        writer.commit()
    assert out.exists() and not out.with_name("store.h5.lock").exists()


def test_interrupt_mid_write_removes_partial(db, monkeypatch):
    renders, csv_path, out = db
    calls = []

    def progress(n):
        calls.append(n)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        patchify_lib(renders, csv_path, out, progress=progress)
    assert not out.exists() and not partial_path(out).exists()


def test_corrupt_render_mid_write_leaves_nothing(cli, db):
    renders, csv_path, out = db
    stim = renders / "stimuli" / "m1_s2.png"
    stim.write_bytes(stim.read_bytes()[:200])  # header intact, data truncated
    r = cli("patchify", renders, "--db", csv_path, "--out", out)
    _assert_failed(r, "m1_s2.png", out=out)


# -- errors --------------------------------------------------------------------------------------

def test_missing_renders_reported_together(cli, db):
    renders, csv_path, out = db
    (renders / "stimuli" / "m0_s1.png").unlink()
    (renders / "stimuli" / "m1_s2.png").unlink()
    (renders / "references" / "m1.png").unlink()
    r = cli("patchify", renders, "--db", csv_path, "--out", out)
    _assert_failed(r, "3 render file(s) missing", "stimuli/m0_s1.png", "stimuli/m1_s2.png", "references/m1.png",
                   out=out)


def test_missing_view_reported(cli, tmp_path):
    renders, csv_path = make_render_db(tmp_path / "db", n_models=1, n_stimuli_per_model=2, views=2)
    (renders / "stimuli" / "m0_s1" / "vp2.png").unlink()
    out = tmp_path / "s.h5"
    _assert_failed(cli("patchify", renders, "--db", csv_path, "--out", out), "stimuli/m0_s1/vp2.png", out=out)


def test_missing_renders_folder(cli, tmp_path):
    _, csv_path = make_render_db(tmp_path / "db", n_models=1)
    out = tmp_path / "s.h5"
    _assert_failed(cli("patchify", tmp_path / "nope", "--db", csv_path, "--out", out), "no such folder", out=out)
    _assert_failed(cli("patchify", "--db", csv_path, "--out", out), "missing RENDERS folder", out=out)


@pytest.mark.parametrize("header,rows,fragments", [
    (["model", "MOS"], [["m0", "0.1"]], ["lacks required column(s) stimulus", "found: model, MOS"]),
    (["name", "stim"], [["m0", "m0_s0"]], ["lacks required column(s) model, stimulus"]),
    (["model", "stimulus", "MOS"], [["m0", "m0_s0", "0.1"], ["m0", "m0_s1", "0.2"], ["m0", "m0_s0", "0.3"]],
     ["duplicate stimulus names: m0_s0 (lines 2, 4)"]),
    (["model", "stimulus", "MOS"], [["m0", "m0_s0", "0.1"], ["m0", "m0_s1", "bad"], ["m0", "m0_s2", "nan"]],
     ["MOS must be a finite number on every row", "line 3 ('bad')", "line 4 ('nan')"]),
    (["model", "stimulus", "mos"], [["m0", "m0_s0", ""]], ["MOS must be a finite number", "line 2 (empty)"]),
    (["model", "stimulus"], [], ["has a header but no rows"]),
    (["model", "stimulus"], [["m0", "../m0_s0"]], ["is not a plain file name"]),
])
def test_bad_csv(cli, db, header, rows, fragments):
    renders, csv_path, out = db
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    _assert_failed(cli("patchify", renders, "--db", csv_path, "--out", out), str(csv_path), *fragments, out=out)


def test_missing_csv(cli, db, tmp_path):
    renders, _, out = db
    _assert_failed(cli("patchify", renders, "--db", tmp_path / "none.csv", "--out", out), "none.csv: no such file",
                   out=out)


def test_mos_column_accepts_lowercase(tmp_path):
    renders, csv_path = make_render_db(tmp_path / "db", n_models=1)
    csv_path.write_text(csv_path.read_text().replace("model,stimulus,MOS", "Model,Stimulus,mos"))
    result = patchify_lib(renders, csv_path, tmp_path / "s.h5")
    assert result.has_mos and result.n_stimuli == 3


def test_size_mismatch(cli, db):
    renders, csv_path, out = db
    stim = renders / "stimuli" / "m1_s0.png"
    save_png(stim, np.asarray(Image.open(stim))[:, :250])
    _assert_failed(cli("patchify", renders, "--db", csv_path, "--out", out), "1 render(s) differ in size",
                   "stimuli/m1_s0.png is 250x192 but references/m1.png is 256x192", out=out)


def test_model_without_foreground_is_flagged(cli, db):
    renders, csv_path, out = db
    ref = renders / "references" / "m1.png"
    empty = np.asarray(Image.open(ref)).copy()
    empty[..., 3] = 0  # fully transparent: no object pixel at all
    save_png(ref, empty)
    r = cli("patchify", renders, "--db", csv_path, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    assert "warning: model m1:" in r.stderr and "no-foreground" in r.stderr
    doc = json.loads(r.stdout)
    assert doc["no_foreground"] == ["m1"]
    with PatchStore.open(out) as store:
        st = store.stimuli
        m1 = st[st["model"] == "m1"]
        assert len(m1) == 3 and (m1["count"] == 0).all() and (m1["flag"] == "no-foreground").all()
        assert (st[st["model"] == "m0"]["flag"] == "").all()
        assert store.models["ref_count"].tolist()[1] == 0


def test_bad_background_option(cli, db):
    renders, csv_path, out = db
    _assert_failed(cli("patchify", renders, "--db", csv_path, "--out", out, "--background", "white"),
                   "expected 'auto' or R,G,B", out=out)


def test_library_errors_are_invalid_input(tmp_path):
    renders, csv_path = make_render_db(tmp_path / "db", n_models=1)
    (renders / "stimuli" / "m0_s0.png").unlink()
    with pytest.raises(InvalidInputError, match="missing"):
        patchify_lib(renders, csv_path, tmp_path / "s.h5", PatchSpec())


def test_patchify_never_imports_torch(tmp_path):
    renders, csv_path = make_render_db(tmp_path / "db", n_models=1, n_stimuli_per_model=1)
    code = (
        "import sys\n"
        "from iqa_cli.cli.app import app\n"
        f"args = ['patchify', {str(renders)!r}, '--db', {str(csv_path)!r}, '--out', {str(tmp_path / 's.h5')!r}]\n"
        "try:\n    app(args, prog_name='iqa')\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("NO-TORCH")
    assert (tmp_path / "s.h5").exists()
