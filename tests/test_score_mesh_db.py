"""score-mesh-db: per-stimulus scores against the reference `lpips` package applied patch by
patch, flagged stimuli, outputs, and the streaming engine's properties."""

from __future__ import annotations

import csv
import json

import lpips
import numpy as np
import pytest
import torch
from PIL import Image

from iqa_cli import create_metric
from iqa_cli.datasets.mesh_db import patchify
from iqa_cli.io.images import load_image_uint8
from iqa_cli.io.patches import PatchSpec
from iqa_cli.io.store import PatchStore
from iqa_cli.score_db import score_mesh_db, stimulus_scores
from mesh_fixtures import make_patch_db, make_render_db, save_png


@pytest.fixture(scope="module")
def render_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("meshdb")
    renders, db = make_render_db(root, n_models=2, n_stimuli_per_model=3, size=(160, 224), views=2)
    store = root / "store.h5"
    patchify(renders, db, store, PatchSpec(size=64, stride=32, min_foreground=0.6))
    return renders, db, store


def reference_lpips(metric):
    ref = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()
    ref.net.load_state_dict(metric.net.state_dict())
    return ref


def to_tensor(patch_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(patch_uint8)).permute(2, 0, 1).float().div(255)[None]


def test_scores_equal_reference_lpips_patch_by_patch_on_render_tiles(render_store):
    renders, _, store_path = render_store
    metric = create_metric("lpips", net="alex")
    ref_model = reference_lpips(metric)
    result = score_mesh_db(store_path, metric, batch_size=7, device="cpu")  # odd batch: runs cross stimuli
    store = PatchStore.open(store_path)
    views = {m: store.view_names(i) for i, m in enumerate(store.models["name"])}
    checked = 0
    for row, r in zip(store.stimuli.itertuples(), result.stimuli):
        index = store.patch_index(row.first, row.first + row.count)
        # Cut the tiles straight from the PNG renders, independently of the store.
        images = {view: (load_image_uint8(renders / "references" / row.model / f"{view}.png"),
                         load_image_uint8(renders / "stimuli" / row.stimulus / f"{view}.png"))
                  for view in views[row.model]}
        distances = []
        for v, y, x in zip(index["view"], index["y"], index["x"]):
            ref_img, dist_img = images[views[row.model][v]]
            a, b = ref_img[y:y + 64, x:x + 64], dist_img[y:y + 64, x:x + 64]
            with torch.no_grad():
                distances.append(min(float(ref_model(to_tensor(a), to_tensor(b), normalize=True)), 1.0))
        assert r.n_patches == row.count > 0
        assert r.score == pytest.approx(np.mean(distances), abs=1e-4)
        checked += 1
    assert checked == 6
    assert result.correlation is not None and result.correlation.n == 6


def test_scores_equal_reference_lpips_on_published_patch_import(tmp_path):
    root, csv_path = make_patch_db(tmp_path / "pub", counts={"bunny": [4, 4], "dragon": [3]})
    store_path = tmp_path / "pub.h5"
    patchify(None, csv_path, store_path, from_patches=root)
    metric = create_metric("lpips", net="alex")
    ref_model = reference_lpips(metric)
    result = score_mesh_db(store_path, metric, device="cpu")
    ref_dir = next(root.glob("References_patches*"))
    stim_dir = next(root.glob("*Stimuli_patches*"))
    for r in result.stimuli:
        d = []
        for p in range(1, r.n_patches + 1):
            a = np.asarray(Image.open(ref_dir / f"{r.model}_Ref_P{p}.png").convert("RGB"))
            b = np.asarray(Image.open(stim_dir / f"{r.stimulus}_P{p}.png").convert("RGB"))
            with torch.no_grad():
                d.append(min(float(ref_model(to_tensor(a), to_tensor(b), normalize=True)), 1.0))
        assert r.score == pytest.approx(np.mean(d), abs=1e-4)


def test_subset_scores_and_batch_size_do_not_change_results(render_store):
    _, _, store_path = render_store
    metric = create_metric("lpips", net="alex")
    full = stimulus_scores(store_path, metric, batch_size=256, device="cpu")
    some = stimulus_scores(store_path, metric, stimuli=[4, 1], batch_size=5, device="cpu")
    np.testing.assert_allclose(some, full[[4, 1]], atol=1e-6)


def test_uncached_reference_path_matches_cached(render_store, monkeypatch):
    import iqa_cli.engine as engine

    _, _, store_path = render_store
    metric = create_metric("lpips", net="alex")
    cached = stimulus_scores(store_path, metric, device="cpu")
    monkeypatch.setattr(engine, "REF_FEATURE_BUDGET_BYTES", 0)  # force per-batch reference features
    np.testing.assert_allclose(stimulus_scores(store_path, metric, batch_size=9, device="cpu"), cached, atol=1e-6)


def test_scattered_reference_rows_path_matches(render_store, monkeypatch):
    import iqa_cli.engine as engine

    _, _, store_path = render_store
    metric = create_metric("lpips", net="alex")
    expected = stimulus_scores(store_path, metric, device="cpu")
    monkeypatch.setattr(engine, "MAX_VIEW_RUNS", 0)  # always one index_select per model
    np.testing.assert_allclose(stimulus_scores(store_path, metric, batch_size=50, device="cpu"), expected, atol=1e-6)


def test_loader_workers_give_the_same_scores(render_store):
    _, _, store_path = render_store
    metric = create_metric("lpips", net="alex")
    np.testing.assert_allclose(stimulus_scores(store_path, metric, device="cpu", num_workers=2),
                               stimulus_scores(store_path, metric, device="cpu", num_workers=0), atol=1e-6)


def test_cli_outputs(cli, render_store, tmp_path):
    _, _, store_path = render_store
    out, plot = tmp_path / "scores.csv", tmp_path / "fit.png"
    result = cli("score-mesh-db", store_path, "--out", out, "--plot", plot, "--json", "--fit", "vqeg4")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {"n", "plcc", "srocc", "krocc", "rmse", "stimuli"} <= set(doc)
    assert doc["n"] == 6 and doc["fit"]["kind"] == "vqeg4"
    assert {"model", "stimulus", "score", "MOS"} <= set(doc["stimuli"][0])
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["model", "stimulus", "score", "n_patches", "MOS"] and len(rows) == 6
    assert float(rows[0]["score"]) == pytest.approx(doc["stimuli"][0]["score"], abs=1e-7)
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.size[0] > 300


def test_cli_plot_format_follows_the_file_name(cli, render_store, tmp_path):
    _, _, store_path = render_store
    for name, magic in (("fit.pdf", b"%PDF"), ("fit.svg", b"<?xml")):
        assert cli("score-mesh-db", store_path, "--plot", tmp_path / name).exit_code == 0
        assert (tmp_path / name).read_bytes().startswith(magic)
    result = cli("score-mesh-db", store_path, "--plot", tmp_path / "fit.gif", "--out", tmp_path / "s.csv")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert "fit.gif: --plot writes .png, .pdf or .svg files" in result.stderr
    assert not (tmp_path / "fit.gif").exists() and not (tmp_path / "s.csv").exists()


def test_cli_table_without_json(cli, render_store):
    _, _, store_path = render_store
    result = cli("score-mesh-db", store_path, "--net", "squeeze")
    assert result.exit_code == 0, result.output
    assert "SROCC" in result.stdout and "m1_s2" in result.stdout


def test_model_without_foreground_is_flagged_not_scored_zero(cli, tmp_path):
    renders, db = make_render_db(tmp_path, n_models=2, n_stimuli_per_model=3, size=(128, 128), alpha=True)
    empty = np.zeros((128, 128, 4), dtype=np.uint8)  # fully transparent: no object anywhere
    save_png(renders / "references" / "m1.png", empty)
    for j in range(3):
        save_png(renders / "stimuli" / f"m1_s{j}.png", empty)
    store = tmp_path / "s.h5"
    assert cli("patchify", renders, "--db", db, "--out", store).exit_code == 0
    result = cli("score-mesh-db", store, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    flagged = {s["stimulus"]: s for s in doc["stimuli"] if s["flag"]}
    assert set(flagged) == {"m1_s0", "m1_s1", "m1_s2"} and all(s["score"] is None for s in flagged.values())
    assert doc["flagged"] == ["m1_s0", "m1_s1", "m1_s2"]
    assert doc["n"] == 3  # the correlation uses the scored stimuli only
    assert all(s["score"] > 0 for s in doc["stimuli"] if not s["flag"])
    assert "no usable patch" in result.stderr


def test_bad_store_is_one_line_error(cli, tmp_path):
    bogus = tmp_path / "x.h5"
    bogus.write_bytes(b"not hdf5 at all")
    result = cli("score-mesh-db", bogus, "--out", tmp_path / "o.csv")
    assert result.exit_code == 1 and "x.h5" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.csv").exists()


def test_unknown_fit_and_precision(cli, render_store):
    _, _, store_path = render_store
    r = cli("score-mesh-db", store_path, "--fit", "cubic")
    assert r.exit_code == 1 and "glm" in r.stderr
    r = cli("score-mesh-db", store_path, "--precision", "fp8", "--device", "cpu")
    assert r.exit_code == 1 and "--precision fp8" in r.stderr and "bf16" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_half_precision_on_the_store_path_stays_close_to_fp32(render_store):
    """Reference features are cached under autocast and reused: bf16 scores within LPIPS's stated
    tolerance (tests/test_precision.py), and not equal, so autocast really ran."""
    _, _, store_path = render_store
    metric = create_metric("lpips", net="alex")
    fp32 = stimulus_scores(store_path, metric, device="cpu")
    bf16 = stimulus_scores(store_path, metric, device="cpu", precision="bf16")
    np.testing.assert_allclose(bf16, fp32, rtol=5e-3, atol=1e-4)
    assert not np.array_equal(bf16, fp32)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_scores_match_cpu(render_store):
    _, _, store_path = render_store
    metric = create_metric("lpips", net="alex")
    cpu = stimulus_scores(store_path, metric, device="cpu")
    np.testing.assert_allclose(stimulus_scores(store_path, metric, device="cuda"), cpu, atol=1e-4)
    np.testing.assert_allclose(stimulus_scores(store_path, metric, device="cuda", precision="bf16"), cpu, atol=2e-2)
