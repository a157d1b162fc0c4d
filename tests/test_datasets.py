"""Database readers: each original layout (tiny trees from real photographs) -> the table it must
give; --format auto detection; splits; every bad input with its one-line message."""

from __future__ import annotations

import csv
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from db_fixtures import (BUILDERS, make_clive, make_csiq, make_database, make_generic, make_kadid, make_koniq,
                         make_live, make_pipal, make_spaq, make_tid, photo, save)
from iqa_cli.datasets.formats import FORMATS, detect_format, get_format, list_formats, parse_format_options, \
    read_database
from iqa_cli.datasets.kadid import KADID_TYPES
from iqa_cli.datasets.table import QualityTable
from iqa_cli.datasets.tid import TID2013_TYPES
from iqa_cli.errors import InvalidInputError

DIRECTION = {"tid2013": True, "tid2008": True, "kadid10k": True, "kadis700k": True, "live": False, "csiq": False,
             "pipal": True, "koniq10k": True, "clive": True, "spaq": True, "pieapp": False, "csv": True}
KIND = {"tid2013": "synthetic", "tid2008": "synthetic", "kadid10k": "synthetic", "kadis700k": "pristine",
        "live": "synthetic", "csiq": "synthetic", "pipal": "restoration", "koniq10k": "authentic",
        "clive": "authentic", "spaq": "authentic", "pieapp": "synthetic", "csv": "synthetic"}


def _rows(table: QualityTable) -> list[dict]:
    return [{k: r[k] for k in ("name", "ref", "score", "content", "type", "level", "split")} for r in table.records()]


def _same_rows(table: QualityTable, expected: list[dict]) -> None:
    got = _rows(table)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        e = dict(e)
        if isinstance(e["score"], float) and math.isnan(e["score"]):
            e["score"] = None
        assert g["score"] == pytest.approx(e["score"]) if e["score"] is not None else g["score"] is None, (g, e)
        g.pop("score"), e.pop("score")
        assert g == e


def _one_line_error(excinfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture(scope="module")
def databases(tmp_path_factory) -> dict:
    """One tiny tree per format (read-only for the tests that share it)."""
    base = tmp_path_factory.mktemp("dbs")
    return {fmt: make_database(fmt, base / fmt) for fmt in BUILDERS}


# -- every reader: rows, paths, scores, direction, detection ----------------------------------------
@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_reader_gives_the_layout_rows(databases, fmt):
    fx = databases[fmt]
    table = read_database(fx.root, fmt)
    assert table.database == fmt and not table.detected
    _same_rows(table, fx.rows)
    assert table.higher_better is DIRECTION[fmt]
    assert table.kind == KIND[fmt]
    assert table.warnings == ()
    for dist, ref in zip(table.rows["dist"], table.rows["ref"]):
        assert Path(dist).is_file() and Path(dist).is_absolute()
        assert ref is None or Path(ref).is_file()
    assert table.has_references is (fx.rows[0]["ref"] is not None)


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_auto_detection_names_each_layout(databases, fmt):
    fx = databases[fmt]
    assert detect_format(fx.root) == fmt
    table = read_database(fx.root)  # format="auto"
    assert table.database == fmt and table.detected
    _same_rows(table, fx.rows)


# -- database specifics ------------------------------------------------------------------------------
def test_tid_case_quirks_types_and_edition_by_content(tmp_path):
    fx = make_tid(tmp_path / "db")  # a neutral folder name: the edition comes from the score file
    assert detect_format(fx.root) == "tid2013"
    table = read_database(fx.root, "tid2013")
    names = set(table.rows["name"])
    assert "distorted_images/I02_01_1.BMP" in names  # stored upper case, listed lower case
    assert set(table.rows["ref"].map(lambda p: Path(p).name)) == {"I01.BMP", "I02.BMP", "i03.bmp"}
    assert table.types == {"01": TID2013_TYPES[0], "08": "Gaussian blur", "18": "colour saturation change"}
    assert table.score_range == (0.0, 9.0) and table.protocol == "content"
    fx8 = make_tid(tmp_path / "other", "tid2008", types=(2, 17), levels=(1, 4))
    assert detect_format(fx8.root) == "tid2008"


def test_tid2008_mos_txt_pairs_scores_in_sorted_file_order(tmp_path):
    fx = make_tid(tmp_path / "tid2008", "tid2008", types=(1, 8, 17), levels=(1, 4), names_file=False)
    assert not (fx.root / "mos_with_names.txt").exists()
    _same_rows(read_database(fx.root, "tid2008"), fx.rows)


def test_tid2013_tree_read_as_tid2008_is_refused(databases):
    with pytest.raises(InvalidInputError) as e:
        read_database(databases["tid2013"].root, "tid2008")
    _one_line_error(e, "i01_01_5.bmp has type 1, level 5", "TID2008 has types 1-17 and levels 1-4", "--format tid2013")


def test_kadid_types_and_the_iqa_distort_listing(tmp_path, databases):
    table = read_database(databases["kadid10k"].root, "kadid10k")
    assert table.types == {"01": "Gaussian blur", "10": "JPEG", "18": "mean shift"}
    assert table.score_name == "MOS" and table.score_range == (1.0, 5.0)
    assert table.options == {"listing": "dmos.csv"}
    fx = make_kadid(tmp_path / "distorted", refs=("chelsea", "coffee"), types=(3, 25), levels=(2, 5), listing=True)
    assert detect_format(fx.root) == "kadid10k"
    table = read_database(fx.root)
    _same_rows(table, fx.rows)
    assert not table.has_scores and table.has_references
    assert table.contents == ["chelsea", "coffee"]
    assert table.types == {"03": KADID_TYPES[2], "25": "contrast change"}
    assert sorted(set(table.rows["level"])) == [2, 5]


def test_kadid_listing_option_reads_another_csv(tmp_path):
    fx = make_kadid(tmp_path / "k", listing=True)
    os.rename(fx.root / "listing.csv", fx.root / "my_list.csv")
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root, "kadid10k")
    _one_line_error(e, "no dmos.csv or listing.csv")
    _same_rows(read_database(fx.root, "kadid10k", listing="my_list.csv"), fx.rows)


def test_kadis_pristine_list(databases):
    table = read_database(databases["kadis700k"].root, "kadis700k")
    assert not table.has_scores and not table.has_references
    assert table.rows["type_name"].iloc[0] == KADID_TYPES[int(table.rows["type"].iloc[0]) - 1]


def test_live_drops_orgs_and_offers_both_dmos(databases):
    fx = databases["live"]
    table = read_database(fx.root, "live")
    assert len(table) == fx.extra["n_entries"] - 2  # two undistorted copies (orgs == 1) dropped
    assert "jp2k/img1.bmp" not in set(table.rows["name"]) and "wn/img2.bmp" not in set(table.rows["name"])
    assert table.options == {"dmos": "realigned"} and table.score_name == "DMOS"
    original = read_database(fx.root, "live", dmos="original")
    np.testing.assert_allclose(original.scores, fx.extra["original_dmos"])
    assert list(original.rows["name"]) == list(table.rows["name"])
    assert table.types["wn"] == "white noise"


def test_live_missing_realigned_file_points_to_the_option(tmp_path):
    fx = make_live(tmp_path / "live")
    (fx.root / "dmos_realigned.mat").unlink()
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root, "live")
    _one_line_error(e, "dmos_realigned.mat", "dmos=original")
    assert len(read_database(fx.root, "live", dmos="original")) == len(fx.rows)


def test_live_mat_files_that_do_not_line_up_with_the_folders(tmp_path):
    fx = make_live(tmp_path / "live")
    (fx.root / "gblur" / "img3.bmp").unlink()
    (fx.root / "gblur" / "info.txt").write_text("bikes.bmp img1.bmp 1\nbikes.bmp img2.bmp 2\n")
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root, "live")
    _one_line_error(e, "15 entries", "14 images", "gblur 2")


def test_csiq_text_export_equals_spreadsheet(tmp_path, databases):
    fx = make_csiq(tmp_path / "csiq_txt", levels=(1, 4), spreadsheet=False)
    table = read_database(fx.root, "csiq")
    _same_rows(table, fx.rows)
    assert table.options == {"labels": "csiq_label.txt"}
    xlsx = read_database(databases["csiq"].root, "csiq")
    assert xlsx.options == {"labels": "csiq.DMOS.xlsx"}
    assert set(xlsx.rows["type"]) == {"awgn", "jpeg", "jpeg2000", "fnoise", "blur", "contrast"}
    assert any("/AWGN/" in n for n in xlsx.rows["name"]) and any("/FNOISE/" in n for n in xlsx.rows["name"])


def test_csiq_spreadsheet_without_recognisable_columns(tmp_path):
    from openpyxl import Workbook

    fx = make_csiq(tmp_path / "csiq", refs=("1600",), levels=(1,), spreadsheet=False)
    book = Workbook()
    book.active.append(["a", "b"])
    book.active.append(["x", 3])
    book.save(fx.root / "csiq.DMOS.xlsx")
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root, "csiq")
    _one_line_error(e, "csiq.DMOS.xlsx", "no sheet with CSIQ image, type, level and DMOS columns", "csiq_label.txt")
    # the text export is still readable when named
    assert len(read_database(fx.root, "csiq", labels="csiq_label.txt")) == len(fx.rows)


def test_csiq_spreadsheet_dmos_cell_not_a_number(tmp_path):
    from openpyxl import load_workbook

    fx = make_csiq(tmp_path / "csiq", refs=("1600",), levels=(1,))
    book = load_workbook(fx.root / "csiq.DMOS.xlsx")
    book["all_by_image"]["F5"] = "n/a"
    book.save(fx.root / "csiq.DMOS.xlsx")
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root, "csiq")
    _one_line_error(e, "sheet 'all_by_image' row 5", "DMOS 'n/a' is not a number")


def test_pipal_merges_distortion_folders_and_refuses_duplicates(tmp_path):
    fx = make_pipal(tmp_path / "pipal")
    table = read_database(fx.root, "pipal")
    assert {n.split("/")[0] for n in table.rows["name"]} == {"Distortion_1", "Distortion_2"}
    assert table.score_name == "Elo" and table.protocol == "content" and not table.has_official_split
    shutil.copy(fx.root / fx.rows[0]["name"], fx.root / "Distortion_2" / Path(fx.rows[0]["name"]).name)
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root, "pipal")
    _one_line_error(e, Path(fx.rows[0]["name"]).name, "in both", "keep one copy")


def test_koniq_resolution_score_and_official_sets(tmp_path, databases):
    fx = databases["koniq10k"]
    table = read_database(fx.root, "koniq10k")
    assert table.options == {"resolution": "1024x768", "score": "MOS"} and table.protocol == "official"
    small = read_database(fx.root, "koniq10k", resolution="512x384", score="MOS_zscore")
    assert all(n.startswith("512x384/") for n in small.rows["name"])
    np.testing.assert_allclose(small.scores, fx.extra["zscore"])
    assert small.score_name == "MOS_zscore" and small.score_range == (0.0, 100.0)
    (split,) = table.splits()
    assert [table.rows["split"][i] for i in split.train] == ["train"] * len(split.train)
    assert len(split.train) == 3 and len(split.val) == 1 and len(split.test) == 2
    fx2 = make_koniq(tmp_path / "k2", sets=False, folders=("512x384",))
    table2 = read_database(fx2.root)
    assert table2.protocol == "image" and not table2.has_official_split
    assert table2.options["resolution"] == "512x384"


def test_clive_drops_the_training_images(databases):
    table = read_database(databases["clive"].root, "clive")
    assert not any("trainingImages" in n for n in table.rows["name"])
    assert any(n.endswith(".JPG") for n in table.rows["name"])


def test_spaq_records_its_resize(databases):
    table = read_database(databases["spaq"].root, "spaq")
    assert table.short_side == 512 and table.score_range == (0.0, 100.0)


def test_pieapp_test_scores_and_reference_row(databases):
    table = read_database(databases["pieapp"].root, "pieapp")
    first = table.rows.iloc[0]
    assert first["dist"] == first["ref"] and first["score"] == 0.0
    assert set(table.rows["split"]) == {"test"} and not any("train" in n for n in table.rows["name"])
    assert table.score_name == "error" and table.higher_better is False


def test_generic_csv_forms_and_options(tmp_path):
    fx = make_generic(tmp_path / "nr", with_refs=False)
    table = read_database(fx.root / "scores.csv")  # the CSV itself as root
    _same_rows(table, fx.rows)
    assert table.kind == "authentic" and table.protocol == "image" and not table.has_references
    fx = make_generic(tmp_path / "fr")
    with open(fx.root / "scores.csv") as fh:
        rows = list(csv.reader(fh))
    with open(fx.root / "custom.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["B", "A", "DMOS", "grp"])
        w.writerows([[d, r, s, "test" if i % 2 else "train"] for i, (d, r, s) in enumerate(rows[1:])])
    (fx.root / "scores.csv").unlink()
    os.rename(fx.root / "refs", fx.root / "REFS")  # listed as refs/...: folders match whatever their case
    table = read_database(fx.root, "csv", dist_column="B", ref_column="a", score_column="DMOS",
                          split_column="grp")
    assert all(Path(r).is_file() and "/REFS/" in r for r in table.rows["ref"])
    assert table.higher_better is False and table.score_name == "DMOS" and table.protocol == "official"
    assert list(table.rows["name"]) == [r["name"] for r in fx.rows]
    assert read_database(fx.root, "csv", dist_column="B", ref_column="A", score_column="DMOS",
                         higher_better="true").higher_better is True


# -- the table: splits, selection, output --------------------------------------------------------------
def test_content_splits_never_share_a_content(databases):
    table = read_database(databases["csiq"].root, "csiq")  # 3 contents
    splits = table.splits(seed=3, repeats=5, train_fraction=0.67)
    assert len(splits) == 5
    contents = table.rows["content"].to_numpy()
    for s in splits:
        assert set(contents[s.train]).isdisjoint(contents[s.test])
        assert len(set(contents[s.train])) == 2 and len(set(contents[s.test])) == 1
        assert sorted([*s.train, *s.test]) == list(range(len(table)))
    again = table.splits(seed=3, repeats=5, train_fraction=0.67)
    assert all(np.array_equal(a.train, b.train) for a, b in zip(splits, again))
    other = table.splits(seed=4, repeats=5, train_fraction=0.67)
    assert any(not np.array_equal(a.train, b.train) for a, b in zip(splits, other))


def test_image_splits_and_selection(databases):
    table = read_database(databases["clive"].root, "clive")  # 5 images
    (split,) = table.splits(seed=0, repeats=1)
    assert len(split.train) == 4 and len(split.test) == 1
    sub = table.select(split.test)
    assert len(sub) == 1 and sub.rows["name"].iloc[0] == table.rows["name"].iloc[split.test[0]]
    assert sub.database == "clive" and len(table.head(2)) == 2
    doc = table.to_dict(images=True)
    assert doc["n"] == 5 and doc["format"] == "clive" and len(doc["images"]) == 5 and doc["images"][0]["ref"] is None
    with pytest.raises(InvalidInputError):
        table.splits(train_fraction=1.5)
    with pytest.raises(InvalidInputError) as e:
        table.splits(protocol="official")
    _one_line_error(e, "no official split")


# -- registry --------------------------------------------------------------------------------------------
def test_registry_lists_formats_and_checks_options(databases):
    names = [f.name for f in list_formats()]
    assert names[:2] == ["tid2013", "tid2008"] and set(names) == set(BUILDERS)
    assert get_format("KADID-10k").name == "kadid10k" and FORMATS["live"].to_dict()["options"][0]["name"] == "dmos"
    assert parse_format_options(["dmos=original", "score = MOS_zscore"]) == {"dmos": "original", "score": "MOS_zscore"}
    with pytest.raises(InvalidInputError) as e:
        parse_format_options(["dmos"])
    _one_line_error(e, "NAME=VALUE")
    with pytest.raises(InvalidInputError) as e:
        read_database(databases["live"].root, "live", bogus="1")
    _one_line_error(e, "format live has no option 'bogus'", "dmos")
    with pytest.raises(InvalidInputError) as e:
        read_database(databases["live"].root, "live", dmos="newest")
    _one_line_error(e, "dmos='newest'", "realigned, original")


# -- bad input: one line each ------------------------------------------------------------------------------
def test_unknown_format(databases):
    with pytest.raises(InvalidInputError) as e:
        read_database(databases["tid2013"].root, "tid2099")
    _one_line_error(e, "unknown database format 'tid2099'", "kadid10k")


def test_folder_matching_no_layout(tmp_path):
    save(tmp_path / "x" / "a.png", photo(0))
    (tmp_path / "x" / "notes.txt").write_text("hello")
    with pytest.raises(InvalidInputError) as e:
        detect_format(tmp_path / "x")
    _one_line_error(e, "matches no database layout", "a.png", "notes.txt", "--format")
    with pytest.raises(InvalidInputError) as e:
        read_database(tmp_path / "nowhere")
    _one_line_error(e, "no such file or folder")


def test_detection_points_inside_a_parent_folder(tmp_path):
    make_kadid(tmp_path / "downloads" / "kadid10k", refs=("I01",), types=(1,), levels=(1,))
    with pytest.raises(InvalidInputError) as e:
        detect_format(tmp_path / "downloads")
    _one_line_error(e, "kadid10k/ inside it holds kadid10k", "pass")


def test_bapps_folder_is_sent_to_eval_bapps(tmp_path):
    (tmp_path / "dataset" / "2afc" / "val").mkdir(parents=True)
    with pytest.raises(InvalidInputError) as e:
        detect_format(tmp_path / "dataset")
    _one_line_error(e, "BAPPS", "iqa eval-bapps")


def test_missing_images_reported_at_once(tmp_path):
    fx = make_tid(tmp_path / "tid2013")
    for row in fx.rows[:3]:
        (fx.root / row["name"]).unlink()
    save(fx.root / "distorted_images" / "i09_09_9.bmp", photo(0), "BMP")
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root, "tid2013")
    _one_line_error(e, "3 TID2013 image(s) missing", Path(fx.rows[0]["name"]).name, Path(fx.rows[2]["name"]).name,
                    "1 image(s) on disk are in no score file (distorted_images/i09_09_9.bmp)")


def test_many_missing_images_are_counted_not_all_listed(tmp_path):
    fx = make_kadid(tmp_path / "k")
    for row in fx.rows:
        (fx.root / row["name"]).unlink()
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root)
    _one_line_error(e, "18 KADID-10k image(s) missing", "... and 13 more")


def test_extra_images_are_one_warning(tmp_path):
    fx = make_kadid(tmp_path / "k", refs=("I01",), types=(1,), levels=(1, 2))
    save(fx.root / "images" / "I01_01_05.png", photo(0))
    table = read_database(fx.root)
    assert len(table) == 2
    (warning,) = table.warnings
    assert "1 image(s)" in warning and "images/I01_01_05.png" in warning and "\n" not in warning


@pytest.mark.parametrize("fmt, edit, fragments", [
    ("tid2013", lambda r: _first_token(r / "mos_with_names.txt", "5,5"),
     ("line 1", "MOS '5,5' is not a number")),
    ("kadid10k", lambda r: _csv_cell(r / "dmos.csv", 2, 2, "high"),
     ("dmos.csv: line 3", "score 'high' is not a number")),
    ("pipal", lambda r: _replace_in(r / "Train_Label" / "A0001.txt", ",1", ",one", count=1), ("A0001.txt: line 1",
                                                                                             "Elo score 'one")),
    ("koniq10k", lambda r: _csv_cell(r / "koniq10k_scores_and_distributions.csv", 1, 7, ""),
     ("line 2", "MOS an empty cell is not a number")),
    ("pieapp", lambda r: _replace_in(r / "labels" / "test" / "ref_1_per_image_score.csv", ", 0\n", ", zero\n"),
     ("ref_1_per_image_score.csv: line 2", "error score 'zero'")),
    ("csv", lambda r: _csv_cell(r / "scores.csv", 3, 2, "?"), ("scores.csv: line 4", "score '?' is not a number")),
])
def test_scores_that_are_not_numbers(tmp_path, fmt, edit, fragments):
    fx = make_database(fmt, tmp_path / fmt)
    edit(fx.root)
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root, fmt)
    _one_line_error(e, *fragments)


def test_spaq_mos_cell_not_a_number(tmp_path):
    from openpyxl import load_workbook

    fx = make_spaq(tmp_path / "spaq")
    path = fx.root / "Annotations" / "MOS and Image attribute scores.xlsx"
    book = load_workbook(path)
    book.active["B3"] = None
    book.save(path)
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root)
    _one_line_error(e, "sheet 'Sheet1' row 3", "MOS an empty cell")


def test_files_of_the_wrong_kind(tmp_path):
    # a dmos.csv of another database beside images/
    fx = make_kadid(tmp_path / "k", refs=("I01",), types=(1,), levels=(1,))
    (fx.root / "dmos.csv").write_text("image,dmos\nimg1.bmp,40.2\n")
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root)
    _one_line_error(e, "dmos.csv", "is not KADID-10k's", "not a KADID-10k score file")
    # a LIVE .mat file holding other variables
    fx = make_live(tmp_path / "live")
    from scipy.io import savemat

    savemat(fx.root / "dmos_realigned.mat", {"scores": np.zeros((1, 3))})
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root)
    _one_line_error(e, "dmos_realigned.mat", "no variable dmos_new, orgs", "(found scores)")
    # a text file in TID's place that is not TID's
    fx = make_tid(tmp_path / "tid2013", n_refs=1, types=(1,), levels=(1,))
    (fx.root / "mos_with_names.txt").write_text("name,mos\ni01_01_1.bmp,5.0\n")
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root, "tid2013")
    _one_line_error(e, "line 1", "not a TID2013 mos_with_names.txt")
    # KonIQ's score file replaced by another CSV
    fx = make_koniq(tmp_path / "koniq")
    (fx.root / "koniq10k_scores_and_distributions.csv").write_text("file,quality\na.jpg,3\n")
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root)
    _one_line_error(e, "no image_name and MOS columns", "not the KonIQ-10k score file")
    # CLIVE's .mat files swapped
    fx = make_clive(tmp_path / "clive")
    shutil.copy(fx.root / "Data" / "AllMOS_release.mat", fx.root / "Data" / "AllImages_release.mat")
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root)
    _one_line_error(e, "AllImages_release.mat", "no variable AllImages_release")


def test_names_that_differ_only_by_case(tmp_path):
    fx = make_tid(tmp_path / "tid2013", n_refs=2, types=(1,), levels=(1,))
    save(fx.root / "reference_images" / "i01.bmp", photo(0), "BMP")
    if len(list((fx.root / "reference_images").iterdir())) < 3:
        pytest.skip("case-insensitive file system: the clash cannot be written")
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root, "tid2013")
    _one_line_error(e, "differ only by case", "I01.BMP / i01.bmp")


def test_missing_layout_folder_and_score_file(tmp_path):
    fx = make_csiq(tmp_path / "csiq", refs=("1600",), levels=(1,), spreadsheet=False)
    (fx.root / "csiq_label.txt").unlink()
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root, "csiq")
    _one_line_error(e, "no csiq.DMOS.xlsx or csiq_label.txt", "labels=FILE")
    shutil.rmtree(fx.root / "dst_imgs")
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root, "csiq")
    _one_line_error(e, "no dst_imgs/")


# -- helpers ------------------------------------------------------------------------------------------------
def _replace_in(path: Path, old: str, new: str, count: int = -1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def _first_token(path: Path, value: str) -> None:
    lines = path.read_text().splitlines()
    lines[0] = value + " " + lines[0].split()[1]
    path.write_text("\n".join(lines) + "\n")


def _csv_cell(path: Path, row: int, col: int, value: str) -> None:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    rows[row][col] = value
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_csiq_spreadsheet_found_by_content_without_a_header(tmp_path):
    """No header row, columns in another order, whole distorted names instead of ref/type/level."""
    from openpyxl import Workbook

    fx = make_csiq(tmp_path / "csiq", refs=("1600", "boston"), levels=(2, 3), spreadsheet=False)
    book = Workbook()
    for row in fx.rows:
        book.active.append([row["score"], row["name"].split("/")[-1].lower()])
    book.save(fx.root / "scores.xlsx")
    table = read_database(fx.root, "csiq", labels="scores.xlsx")
    _same_rows(table, fx.rows)
    # two unnamed columns of numbers in [0, 1]: which is DMOS cannot be told, and is not guessed
    for i, row in enumerate(fx.rows, start=1):
        book.active.cell(i, 3, 0.02)
    book.save(fx.root / "scores.xlsx")
    with pytest.raises(InvalidInputError) as e:
        read_database(fx.root, "csiq", labels="scores.xlsx")
    _one_line_error(e, "2 columns could be the dmos (head one of them 'dmos')")
