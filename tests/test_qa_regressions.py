"""Regressions found by QA: every bad input ends in one `error: ` line on stderr, the right exit
code, no traceback and no half-written output."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_fixtures import make_render_db


def one_line_error(result, *needles: str, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def small_db(tmp_path_factory) -> tuple[Path, Path]:
    """(renders, DB.csv): 2 models x 3 stimuli, 96x96 renders with alpha."""
    root = tmp_path_factory.mktemp("qa_db")
    return make_render_db(root, n_models=2, n_stimuli_per_model=3, size=(96, 96))


def test_store_patches_smaller_than_the_net_are_one_line(cli, small_db, tmp_path):
    renders, db = small_db
    store = tmp_path / "s16.h5"
    assert cli("patchify", renders, "--db", db, "--out", store, "--patch-size", "16", "--stride", "16").exit_code == 0
    one_line_error(cli("score-mesh-db", store), "s16.h5", "16x16", "--patch-size 31", "--net vgg")
    one_line_error(cli("train", store, "--name", "run", "--checkpoints-dir", tmp_path / "ck", "--split", "0.5"),
                   "s16.h5", "--patch-size 31")
    assert not (tmp_path / "ck" / "run").exists()  # nothing written for a run that cannot start


def test_too_small_image_hint_never_suggests_the_net_in_use(cli, tmp_path):
    from conftest import save_png
    import numpy as np

    img = np.zeros((8, 8, 3), np.uint8)
    a, b = save_png(tmp_path / "a.png", img), save_png(tmp_path / "b.png", img)
    line = one_line_error(cli("score-pair", a, b, "--net", "vgg"), "a.png", "16x16")
    assert "--net vgg" not in line


@pytest.mark.parametrize("content", ["npz", "complex"])
def test_judge_file_that_is_not_one_real_number(cli, tmp_path, content):
    import numpy as np

    from bapps_fixtures import make_bapps_tree

    root = make_bapps_tree(tmp_path / "dataset", {"2afc": ["val/cnn"]}, n=2)
    judge = root / "2afc" / "val" / "cnn" / "judge" / "000001.npy"
    if content == "npz":
        with open(judge, "wb") as fh:
            np.savez(fh, judge=np.array([0.5]))
    else:
        np.save(judge, np.array([0.5 + 0.5j]))
    one_line_error(cli("eval-bapps", "2afc", root, "--model", "l2"), "000001.npy")


def _huge_png(path: Path, side: int = 20000) -> Path:
    """A valid PNG header claiming side x side pixels (over PIL's decompression-bomb limit)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
                     + chunk(b"IEND", b""))
    return path


def test_image_over_pils_pixel_limit_is_one_line(cli, tmp_path, examples):
    big = _huge_png(tmp_path / "big.png")
    one_line_error(cli("score-pair", big, _huge_png(tmp_path / "big2.png")), "big.png", "too large")
    one_line_error(cli("score-pair", examples["ex_ref"], big, "--resize"), "big.png", "too large")


@pytest.mark.parametrize("content", [b"", b"junk\n", b"\x80\x02garbage"])
def test_damaged_cached_imagenet_weights_are_one_line(cli, tmp_path, monkeypatch, examples, content):
    from iqa_cli.models.backbones import BACKBONES
    from iqa_cli.weights import torchvision_cache_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    cached = torchvision_cache_file(BACKBONES["alex"])
    cached.parent.mkdir(parents=True)
    cached.write_bytes(content)
    one_line_error(cli("score-pair", examples["ex_ref"], examples["ex_p0"]), cached.name, "delete the file")


def _strict_json(text: str):
    import json

    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_has_null_not_nan_when_correlation_is_undefined(cli, tmp_path):
    import shutil

    renders, db = make_render_db(tmp_path, n_models=2, n_stimuli_per_model=3, size=(96, 96))
    for stim in (renders / "stimuli").iterdir():  # every stimulus identical to its reference: constant scores
        shutil.copy(renders / "references" / f"{stim.stem.split('_')[0]}.png", stim)
    store = tmp_path / "same.h5"
    assert cli("patchify", renders, "--db", db, "--out", store).exit_code == 0
    result = cli("score-mesh-db", store, "--json")
    assert result.exit_code == 0, result.output
    doc = _strict_json(result.stdout)
    assert doc["srocc"] is None and doc["plcc"] is None and doc["n"] == 6


@pytest.mark.parametrize("fit", ["glm", "vqeg4"])
def test_no_python_warnings_on_stderr_for_degenerate_correlations(cli, tmp_path, fit):
    import shutil

    renders, db = make_render_db(tmp_path, n_models=2, n_stimuli_per_model=3, size=(96, 96))
    for stim in (renders / "stimuli").iterdir():
        shutil.copy(renders / "references" / f"{stim.stem.split('_')[0]}.png", stim)
    store = tmp_path / "same.h5"
    assert cli("patchify", renders, "--db", db, "--out", store).exit_code == 0
    result = cli("score-mesh-db", store, "--json", "--fit", fit)
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.stderr and result.stderr.strip() == "", result.stderr


def test_a_saturating_vqeg4_fit_does_not_inflate_rank_correlations():
    import numpy as np
    from scipy import stats

    from iqa_cli.stats.correlation import correlation_report

    s = np.linspace(0.1, 1.0, 10)
    mos = np.array([0.3, 0.1, 0.4, 0.2, 0.25, 0.8, 0.7, 0.9, 0.75, 0.85])  # a step: the fit saturates
    report = correlation_report(s, mos, fit="vqeg4")
    assert report.srocc == pytest.approx(stats.spearmanr(s, mos)[0])  # a monotonic map keeps the ranks
    assert report.krocc == pytest.approx(stats.kendalltau(s, mos)[0])
    flipped = correlation_report(-s, mos, fit="vqeg4")  # decreasing fit: the fitted values rank as MOS does
    assert flipped.srocc == pytest.approx(report.srocc) and flipped.srocc_raw == pytest.approx(-report.srocc)


@pytest.fixture
def a_file(tmp_path) -> Path:
    """A plain file, used where a folder is needed."""
    path = tmp_path / "plain.txt"
    path.write_text("not a folder")
    return path


def test_output_under_a_file_fails_before_any_work(cli, tmp_path, a_file, examples, small_db):
    from bapps_fixtures import make_bapps_tree

    ref, dist = examples["ex_ref"], examples["ex_p0"]
    one_line_error(cli("score-pair", ref, dist, "--out", a_file / "x.csv"), "x.csv", "plain.txt is a file", "--out")
    one_line_error(cli("score-pair", ref, dist, "--spatial-map", a_file / "h.png"), "h.png", "--spatial-map")
    folders = tmp_path / "f"
    for side in ("ref", "dist"):
        (folders / side).mkdir(parents=True)
        (folders / side / "a.png").write_bytes(ref.read_bytes())
    one_line_error(cli("score-pair", folders / "ref", folders / "dist", "--spatial-dir", a_file), "plain.txt",
                   "--spatial-dir")
    renders, db = small_db
    store = tmp_path / "s.h5"
    one_line_error(cli("patchify", renders, "--db", db, "--out", a_file / "s.h5"), "s.h5", "--out")
    one_line_error(cli("patchify", renders, "--db", db, "--out", store, "--counts-csv", tmp_path), "--counts-csv")
    assert not store.exists()  # the store is not built when the counts CSV cannot be written
    assert cli("patchify", renders, "--db", db, "--out", store).exit_code == 0
    one_line_error(cli("score-mesh-db", store, "--out", a_file / "x.csv"), "x.csv", "--out")
    one_line_error(cli("score-mesh-db", store, "--plot", a_file / "p.png"), "p.png", "--plot")
    bapps = make_bapps_tree(tmp_path / "dataset", {"2afc": ["val/cnn"]}, n=2)
    one_line_error(cli("eval-bapps", "2afc", bapps, "--model", "l2", "--out", a_file / "x.csv"), "x.csv", "--out")
    one_line_error(cli("train", store, "--name", "run", "--checkpoints-dir", a_file), "plain.txt", "--checkpoints-dir")
    assert a_file.read_text() == "not a folder" and not list(tmp_path.glob("**/*.csv"))


def test_db_csv_errors_name_the_real_file_lines(cli, small_db, tmp_path):
    renders, _ = small_db
    db = tmp_path / "DB.csv"
    # blank lines (2, 3, 5) and a quoted field over two lines (6-7) must not shift the line numbers
    db.write_text('model,stimulus,MOS\n\n\nm0,m0_s0,0.2\n\nm0,m0_s1,"0.4\n"\nm0,m0_s0,0.3\n')
    one_line_error(cli("patchify", renders, "--db", db, "--out", tmp_path / "s.h5"), "m0_s0 (lines 4, 8)")


def test_spatial_dir_never_overwrites_one_heat_map_with_another(cli, tmp_path, examples):
    from PIL import Image

    ref, dist = tmp_path / "ref", tmp_path / "dist"
    for side, src in ((ref, "ex_ref"), (dist, "ex_p0")):
        side.mkdir()
        img = Image.open(examples[src]).convert("RGB")
        img.save(side / "a.png")
        img.save(side / "a.bmp")  # same stem, other format
        img.save(side / "b.png")
    result = cli("score-pair", ref, dist, "--spatial-dir", tmp_path / "maps")
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(tmp_path / "maps").as_posix() for p in (tmp_path / "maps").rglob("*.png"))
    assert written == ["a.bmp.png", "a.png.png", "b.png"]

    frames = tmp_path / "frames"
    for sub in ("x", "y"):
        (frames / sub).mkdir(parents=True)
        (frames / sub / "f.png").write_bytes(examples["ex_ref"].read_bytes())
    (frames / "g.png").write_bytes(examples["ex_p1"].read_bytes())
    result = cli("score-pair", frames, "--all-pairs", "--spatial-dir", tmp_path / "pairs")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "pairs").glob("*.png"))) == 3  # one map per pair (was 2: f__g.png twice)


def test_score_pair_loads_a_trained_graphics_checkpoint_with_just_checkpoint(cli, tmp_path, examples):
    import json

    from iqa_cli.models.backbones import BACKBONES
    from iqa_cli.models.lpips import PerceptualDistance
    from iqa_cli.weights import save_checkpoint

    model = PerceptualDistance(BACKBONES["alex"], head_type="graphics")
    path = save_checkpoint(tmp_path / "run" / "latest.pth", model, net="alex", version="0.1", head_type="graphics")
    result = cli("score-pair", examples["ex_ref"], examples["ex_p0"], "--checkpoint", path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metric"] == "graphics-lpips"
    result = cli("score-pair", examples["ex_ref"], examples["ex_p0"], "--json")  # no checkpoint: still lpips
    assert json.loads(result.stdout)["metric"] == "lpips"


def test_checkpoint_that_is_not_a_weights_file_names_the_problem(cli, tmp_path, examples):
    import h5py
    import numpy as np

    ref, dist = examples["ex_ref"], examples["ex_p0"]
    h5 = tmp_path / "store.h5"
    with h5py.File(h5, "w") as f:
        f["x"] = np.arange(3)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for path, needle in ((ref, "no torch.save data"), (h5, "no torch.save data"), (empty, "empty file"),
                         (tmp_path, "is a folder")):
        line = one_line_error(cli("score-pair", ref, dist, "--checkpoint", path), path.name, needle)
        assert "PyTorch 2.6" not in line  # no truncated torch.load advice
    one_line_error(cli("score-pair", ref, dist, "--backbone-weights", tmp_path), "is a folder")


def test_checkpoint_with_the_wrong_net_says_which_net_to_use(cli, tmp_path, examples):
    from iqa_cli.models.backbones import BACKBONES
    from iqa_cli.models.lpips import PerceptualDistance
    from iqa_cli.weights import save_checkpoint

    model = PerceptualDistance(BACKBONES["alex"], head_type="graphics")
    path = save_checkpoint(tmp_path / "latest.pth", model, net="alex", version="0.1", head_type="graphics")
    one_line_error(cli("score-pair", examples["ex_ref"], examples["ex_p0"], "--checkpoint", path, "--net", "vgg"),
                   "latest.pth", "pass --net alex")


@pytest.mark.parametrize("args, needle", [
    (["score-pair", "a.png", "b.png", "--batch-size", "0"], "--batch-size"),
    (["--bogus"], "--bogus"),
    (["nope"], "nope"),
    (["patchify", "renders"], "--out"),  # --db is optional since --from-db; --out is the missing required one
    (["patchify", "renders", "--out", "x.h5"], "--db is required"),
    (["eval-bapps", "2afc", "dataset", "--limit", "0"], "--limit"),
    (["train", "--name"], "--name"),
])
def test_usage_errors_are_one_line_with_exit_code_2(cli, args, needle):
    line = one_line_error(cli(*args), needle, code=2)
    assert "--help" in line


def test_no_arguments_still_shows_help(cli):
    result = cli("eval-bapps")
    assert "Usage" in result.output and "2afc" in result.output


@pytest.mark.parametrize("command", [[], ["score-pair"], ["patchify"], ["score-mesh-db"], ["train"], ["eval-bapps"],
                                     ["eval-bapps", "2afc"], ["eval-bapps", "jnd"], ["eval-jnd"]])
def test_every_help_page_teaches_with_examples(cli, command):
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.stdout and f"iqa {' '.join(command)}".strip() in result.stdout


def test_a_folder_named_latest_pth_does_not_send_the_user_in_circles(cli, small_db, tmp_path):
    renders, db = small_db
    store = tmp_path / "s.h5"
    assert cli("patchify", renders, "--db", db, "--out", store).exit_code == 0
    (tmp_path / "ck" / "run" / "latest.pth").mkdir(parents=True)
    for extra in ([], ["--resume"]):  # was: "drop --resume" with it, "pass --resume" without
        one_line_error(cli("train", store, "--name", "run", "--checkpoints-dir", tmp_path / "ck", *extra),
                       "latest.pth: is a folder")


@pytest.mark.parametrize("damage", ["first", "names", "ref"])
def test_store_with_broken_tables_is_refused_at_open(cli, small_db, tmp_path, damage):
    import h5py
    import numpy as np

    renders, db = small_db
    store = tmp_path / "s.h5"
    assert cli("patchify", renders, "--db", db, "--out", store).exit_code == 0
    with h5py.File(store, "a") as f:  # a store another program "fixed": attributes fine, tables not
        if damage == "first":
            first = f["stimuli/first"][()]
            first[-1] = 10 ** 6
            f["stimuli/first"][...] = first
        elif damage == "names":
            del f["stimuli/model"]
            f["stimuli/model"] = np.arange(f["stimuli/mos"].shape[0])
        else:
            refs = f["patch_index/ref"][()]
            refs[0] = 10 ** 6
            f["patch_index/ref"][...] = refs
    one_line_error(cli("score-mesh-db", store), "s.h5", "inconsistent patch store", "--force")


def test_mos_outside_the_glm_range_names_the_store_before_scoring(cli, tmp_path, monkeypatch):
    import csv

    renders, db = make_render_db(tmp_path, n_models=2, n_stimuli_per_model=3, size=(96, 96))
    rows = list(csv.reader(open(db, newline="")))
    with open(db, "w", newline="") as fh:  # a 1..5 MOS scale
        csv.writer(fh).writerows([rows[0]] + [[m, s, str(1 + 4 * float(v))] for m, s, v in rows[1:]])
    store = tmp_path / "s.h5"
    assert cli("patchify", renders, "--db", db, "--out", store).exit_code == 0

    import iqa_cli.engine as engine

    def no_scoring(*args, **kwargs):
        raise AssertionError("patches were scored before the MOS range was checked")

    monkeypatch.setattr(engine, "score_store_patches", no_scoring)
    one_line_error(cli("score-mesh-db", store), "s.h5", "--fit vqeg4")


def test_a_seed_too_large_for_torch_is_one_line_and_writes_nothing(cli, small_db, tmp_path):
    renders, db = small_db
    store = tmp_path / "s.h5"
    assert cli("patchify", renders, "--db", db, "--out", store).exit_code == 0
    one_line_error(cli("train", store, "--name", "run", "--checkpoints-dir", tmp_path / "ck", "--split", "0.5",
                       "--seed", str(2 ** 64)), "--seed", code=2)
    assert not (tmp_path / "ck").exists()


def test_counts_csv_never_overwrites_the_database_csv_or_the_store(cli, small_db, tmp_path):
    import shutil

    renders, db = small_db
    mine = Path(shutil.copy(db, tmp_path / "DB.csv"))
    before = mine.read_bytes()
    store = tmp_path / "s.h5"
    one_line_error(cli("patchify", renders, "--db", mine, "--out", store, "--counts-csv", mine), "--db")
    assert mine.read_bytes() == before and not store.exists()
    one_line_error(cli("patchify", renders, "--db", mine, "--out", store, "--counts-csv", store), "--out")
    assert not store.exists()


def test_outputs_never_overwrite_the_inputs(cli, tmp_path, examples, small_db):
    ref, dist = examples["ex_ref"], examples["ex_p0"]
    before = dist.read_bytes()
    one_line_error(cli("score-pair", ref, dist, "--spatial-map", dist), "--spatial-map", "input")
    one_line_error(cli("score-pair", ref, dist, "--out", ref), "--out", "input")
    folders = {}
    for side, src in (("ref", ref), ("dist", dist)):
        folders[side] = tmp_path / side
        folders[side].mkdir()
        (folders[side] / "a.png").write_bytes(src.read_bytes())
    one_line_error(cli("score-pair", folders["ref"], folders["dist"], "--spatial-dir", folders["dist"]),
                   "--spatial-dir", "input")
    one_line_error(cli("score-pair", folders["ref"], folders["dist"], "--spatial-dir", folders["ref"] / "maps"),
                   "--spatial-dir", "inside the input folder")
    assert dist.read_bytes() == before and (folders["dist"] / "a.png").read_bytes() == before
    renders, db = small_db
    store = tmp_path / "s.h5"
    assert cli("patchify", renders, "--db", db, "--out", store).exit_code == 0
    one_line_error(cli("score-mesh-db", store, "--out", store), "--out", "input")
    one_line_error(cli("score-mesh-db", store, "--plot", store), "--plot", "input")
    assert cli("score-mesh-db", store, "--json").exit_code == 0  # the store is intact
