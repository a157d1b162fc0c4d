"""Tiny image-quality databases in their original layouts, built from real photographs.

Each ``make_*`` builder writes one database the way its authors ship it (names, case quirks, score
files: LIVE's .mat files with ``orgs``, CSIQ's spreadsheet, ...), shrunk to a few references
and levels of images a few dozen pixels wide, and returns a :class:`DbFixture` holding the rows a
correct reader must produce. Shared by the reader, image-cache and eval-db tests.

The photographs are scikit-image's sample images (astronaut, chelsea, coffee, rocket, ...),
cropped and downscaled; distorted versions are noise or blur of a strength that grows with the
level (mesh_fixtures.distort), so a metric's score does track the level.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mesh_fixtures import distort

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "colorwheel", "hubble_deep_field")
SIZE = (24, 32)  # (H, W) of the fixtures' images


@functools.lru_cache(maxsize=None)
def _source(name: str) -> np.ndarray:
    import skimage.data

    return np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])


def photo(i: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """uint8 (H, W, 3): the centre of sample photograph ``i`` (cycling), cropped to the aspect
    ratio of ``size`` and downscaled to it."""
    src = _source(PHOTOS[i % len(PHOTOS)])
    h, w = src.shape[:2]
    th, tw = size
    scale = min(h / th, w / tw)
    ch, cw = int(th * scale), int(tw * scale)
    y, x = (h - ch) // 2, (w - cw) // 2
    crop = Image.fromarray(src[y:y + ch, x:x + cw])
    return np.asarray(crop.resize((tw, th), Image.BICUBIC))


def degrade(image: np.ndarray, kind: int, level: int, n_levels: int = 5, seed: int = 0) -> np.ndarray:
    """Noise (odd ``kind``) or blur (even) whose strength rises with ``level`` (1..n_levels)."""
    return distort(image, "noise" if kind % 2 else "blur", level / n_levels, seed)


def save(path: Path, image: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(path, format=fmt)
    return path


@dataclass
class DbFixture:
    """A database written under ``root`` and the rows its reader must return, in order:
    dicts with name (relative), ref (relative or None), score, content, type, level, split."""

    format: str
    root: Path
    rows: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # builder-specific facts (e.g. dropped LIVE entries)

    def add(self, name: str, ref: str | None, score: float, content: str, type: str = "", level: int = 0,
            split: str = "") -> None:
        self.rows.append({"name": name, "ref": ref, "score": score, "content": content, "type": type,
                          "level": level, "split": split})


def _mos(*values: int) -> float:
    """A deterministic score that falls with the level (the last value) and varies with the rest."""
    *rest, level = values
    return round(8.0 - 1.1 * level + 0.13 * sum((k + 1) * v for k, v in enumerate(rest)) % 1.0, 4)


# -- TID2013 / TID2008 ----------------------------------------------------------------------------
def make_tid(root: Path, edition: str = "tid2013", n_refs: int = 3, types=(1, 8, 18), levels=(1, 2, 5),
             names_file: bool = True) -> DbFixture:
    """reference_images/ I01.BMP, I02.BMP ... and the last one lower case (like TID2013's i25.bmp);
    distorted_images/ iRR_TT_L.bmp, one of them stored upper case (I02_..._1.BMP) while the score
    file names it in lower case. ``names_file=False`` writes TID2008's mos.txt instead."""
    fx = DbFixture(edition, root)
    refs = {}
    for r in range(1, n_refs + 1):
        name = f"i{r:02d}.bmp" if r == n_refs else f"I{r:02d}.BMP"
        refs[r] = photo(r - 1)
        save(root / "reference_images" / name, refs[r], "BMP")
    lines = []
    for r in range(1, n_refs + 1):
        for t in types:
            for lv in levels:
                name = f"i{r:02d}_{t:02d}_{lv}.bmp"
                on_disk = name.upper() if (r == 2 and lv == levels[0]) else name
                save(root / "distorted_images" / on_disk, degrade(refs[r], t, lv, seed=r * 100 + t * 10 + lv), "BMP")
                mos = _mos(r, t, lv)
                lines.append(f"{mos} {name}")
                ref_name = f"i{r:02d}.bmp" if r == n_refs else f"I{r:02d}.BMP"
                fx.add(f"distorted_images/{on_disk}", f"reference_images/{ref_name}", mos, f"I{r:02d}", f"{t:02d}", lv)
    if names_file:
        (root / "mos_with_names.txt").write_text("\n".join(lines) + "\n")
    else:  # mos.txt: values only, in sorted (ref, type, level) order
        (root / "mos.txt").write_text("\n".join(line.split()[0] for line in lines) + "\n")
    (root / "mos_std.txt").write_text("\n".join("0.1" for _ in lines) + "\n")
    return fx


# -- KADID-10k, iqa distort, KADIS-700k ------------------------------------------------------------
def make_kadid(root: Path, refs=("I01", "I02"), types=(1, 10, 18), levels=(1, 3, 5), listing: bool = False
               ) -> DbFixture:
    """images/<ref>.png + images/<ref>_TT_LL.png and dmos.csv (``listing``: iqa distort's listing.csv,
    type and level columns, no scores)."""
    fx = DbFixture("kadid10k", root)
    rows = []
    for i, ref in enumerate(refs):
        image = photo(i + 2)
        save(root / "images" / f"{ref}.png", image)
        for t in types:
            for lv in levels:
                name = f"{ref}_{t:02d}_{lv:02d}.png"
                save(root / "images" / name, degrade(image, t, lv, seed=i * 100 + t * 10 + lv))
                score = float("nan") if listing else round(1 + 4 * _mos(i, t, lv) / 9, 3)
                rows.append((name, f"{ref}.png", t, lv, score))
                fx.add(f"images/{name}", f"images/{ref}.png", score, ref, f"{t:02d}", lv)
    with open(root / ("listing.csv" if listing else "dmos.csv"), "w", newline="") as fh:
        writer = csv.writer(fh)
        if listing:
            writer.writerow(["dist_img", "ref_img", "type", "level"])
            writer.writerows([(d, r, t, lv) for d, r, t, lv, _ in rows])
        else:
            writer.writerow(["dist_img", "ref_img", "dmos", "var"])
            writer.writerows([(d, r, s, 0.25) for d, r, _, _, s in rows])
    return fx


def plant_kadid_mos(db: Path, mos, var=0.1) -> Path:
    """dmos.csv beside an ``iqa distort`` listing.csv, which makes the folder a KADID-10k database:
    ``mos(row)`` gives each distorted image's MOS from its listing row (type, level, ...)."""
    with open(db / "listing.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(db / "dmos.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["dist_img", "ref_img", "dmos", "var"])
        for row in rows:
            writer.writerow([row["dist_img"], row["ref_img"], f"{float(mos(row)):.4f}", var])
    return db


def make_kadis(root: Path, n: int = 4) -> DbFixture:
    fx = DbFixture("kadis700k", root)
    with open(_mkparent(root / "kadis700k_ref_imgs.csv"), "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ref_im", "dist_type_1", "dist_type_2"])
        for i in range(n):
            name = f"{PHOTOS[i % len(PHOTOS)]}_{i}.png"
            save(root / "ref_imgs" / name, photo(i))
            t1, t2 = (i * 7) % 25 + 1, (i * 11) % 25 + 1
            writer.writerow([name, t1, t2])
            fx.add(f"ref_imgs/{name}", None, float("nan"), Path(name).stem, f"{t1:02d}", 0)
    return fx


# -- LIVE release 2 ---------------------------------------------------------------------------------
LIVE_FOLDERS = ("jp2k", "jpeg", "wn", "gblur", "fastfading")


def make_live(root: Path, per_folder: int = 3, ref_names=("bikes.bmp", "caps.bmp", "parrots.bmp"),
              orgs=(("jp2k", 1), ("wn", 2))) -> DbFixture:
    """refimgs/, the five folders with img1..imgN.bmp and a messy info.txt, dmos.mat,
    dmos_realigned.mat (with orgs) and refnames_all.mat, entries in the official order. The
    (folder, N) in ``orgs`` are undistorted copies of their reference (orgs = 1, dropped)."""
    from scipy.io import savemat

    fx = DbFixture("live", root)
    refs = {}
    for i, name in enumerate(ref_names):
        refs[name] = photo(i + 1)
        save(root / "refimgs" / name, refs[name], "BMP")
    dmos, dmos_new, org_flags, refnames = [], [], [], []
    original_rows = []
    for f, folder in enumerate(LIVE_FOLDERS):
        info = ["", "# parameters of this folder", ""]
        for n in range(1, per_folder + 1):
            ref = ref_names[(f + n) % len(ref_names)]
            is_org = (folder, n) in orgs
            image = refs[ref] if is_org else degrade(refs[ref], f, min(5, n + 1), seed=f * 10 + n)
            save(root / folder / f"img{n}.bmp", image, "BMP")
            info.append(f"{ref} img{n}.bmp {0.5 * n:.3f}")
            value_new = 0.0 if is_org else round(20.0 + 11.0 * n + 3.0 * f, 3)
            value_old = 0.0 if is_org else round(value_new + 1.5, 3)
            dmos.append(value_old)
            dmos_new.append(value_new)
            org_flags.append(1.0 if is_org else 0.0)
            refnames.append(ref)
            if not is_org:
                fx.add(f"{folder}/img{n}.bmp", f"refimgs/{ref}", value_new, Path(ref).stem, folder, 0)
                original_rows.append(value_old)
        info.append("")
        (root / folder / "info.txt").write_text("\n".join(info) + "\n")
    cell = np.empty((1, len(refnames)), dtype=object)
    cell[0, :] = refnames
    row = lambda values: np.asarray(values, dtype=np.float64).reshape(1, -1)  # noqa: E731 - MATLAB 1 x N
    savemat(root / "dmos.mat", {"dmos": row(dmos), "orgs": row(org_flags)})
    savemat(root / "dmos_realigned.mat", {"dmos_new": row(dmos_new), "dmos_std": row([5.0] * len(dmos)),
                                          "orgs": row(org_flags)})
    savemat(root / "refnames_all.mat", {"refnames_all": cell})
    fx.extra["original_dmos"] = original_rows
    fx.extra["n_entries"] = len(refnames)
    return fx


# -- CSIQ -------------------------------------------------------------------------------------------
# (type id, token in file names, folder as written here (case varies on purpose), spreadsheet spelling)
CSIQ_TYPES = (("awgn", "AWGN", "AWGN", "noise"), ("jpeg", "JPEG", "jpeg", "jpeg"),
              ("jpeg2000", "jpeg2000", "jpeg2000", "jpeg 2000"), ("fnoise", "fnoise", "FNOISE", "1/f noise"),
              ("blur", "BLUR", "blur", "blur"), ("contrast", "contrast", "contrast", "contrast"))


def make_csiq(root: Path, refs=("1600", "aerial_city", "boston"), levels=(1, 2, 4), spreadsheet: bool = True,
              types=CSIQ_TYPES) -> DbFixture:
    """src_imgs/<ref>.png, dst_imgs/<FOLDER>/<ref>.<TOKEN>.<level>.png (folders in mixed case:
    AWGN/, blur/, FNOISE/) and the official-style csiq.DMOS.xlsx (a notes sheet first, a title
    row above the header, reference 1600 stored as a number, the spreadsheet's own type
    spellings), or the csiq_label.txt export."""
    fx = DbFixture("csiq", root)
    records = []
    for r, ref in enumerate(refs):
        image = photo(r + 3)
        save(root / "src_imgs" / f"{ref}.png", image)
        for k, (kind, token, folder, spelling) in enumerate(types):
            for lv in levels:
                name = f"{ref}.{token}.{lv}.png"
                save(root / "dst_imgs" / folder / name, degrade(image, k, lv, seed=r * 100 + k * 10 + lv))
                dmos = round(0.05 * lv + 0.02 * k + 0.01 * r, 4)
                records.append((ref, k + 1, spelling, lv, 0.01, dmos, name))
                fx.add(f"dst_imgs/{folder}/{name}", f"src_imgs/{ref}.png", dmos, ref, kind, lv)
    if spreadsheet:
        from openpyxl import Workbook

        book = Workbook()
        notes = book.active
        notes.title = "notes"
        notes.append(["CSIQ image database, DMOS per distorted image"])
        sheet = book.create_sheet("all_by_image")
        sheet.append(["CSIQ DMOS (all by image)"])
        sheet.append(["image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos"])
        for ref, idx, spelling, lv, std, dmos, _ in records:
            sheet.append([int(ref) if ref.isdigit() else ref, idx, spelling, lv, std, dmos])
        book.save(root / "csiq.DMOS.xlsx")
    else:
        (root / "csiq_label.txt").write_text("".join(f"{name} {dmos}\n" for *_, dmos, name in records))
    return fx


# -- PIPAL --------------------------------------------------------------------------------------------
def make_pipal(root: Path, refs=("A0001", "A0003"), groups=(0, 2, 6), per_group: int = 2) -> DbFixture:
    """Train_Ref/, the distorted images spread over Distortion_1/ and Distortion_2/, Train_Label/*.txt."""
    fx = DbFixture("pipal", root)
    for r, ref in enumerate(refs):
        image = photo(r + 4)
        save(root / "Train_Ref" / f"{ref}.bmp", image, "BMP")
        lines = []
        for g in groups:
            for i in range(per_group):
                name = f"{ref}_{g:02d}_{i:02d}.bmp"
                folder = f"Distortion_{1 + (g + i) % 2}"
                save(root / folder / name, degrade(image, g, i + 1, seed=r * 100 + g * 10 + i), "BMP")
                elo = round(1500.0 - 40.0 * g - 25.0 * i + 7.0 * r, 4)
                lines.append(f"{name},{elo}")
                fx.add(f"{folder}/{name}", f"Train_Ref/{ref}.bmp", elo, ref, f"{g:02d}", 0)
        (root / "Train_Label").mkdir(parents=True, exist_ok=True)
        (root / "Train_Label" / f"{ref}.txt").write_text("\n".join(lines) + "\n")
    return fx


# -- KonIQ-10k ---------------------------------------------------------------------------------------
def make_koniq(root: Path, n: int = 6, sets: bool = True, folders=("1024x768", "512x384")) -> DbFixture:
    fx = DbFixture("koniq10k", root)
    set_names = ("training", "training", "training", "validation", "test", "test")
    with open(_mkparent(root / "koniq10k_scores_and_distributions.csv"), "w", newline="") as fh, \
            open(root / "koniq10k_distributions_sets.csv", "w", newline="") as sh:
        scores, set_writer = csv.writer(fh), csv.writer(sh)
        scores.writerow(["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"])
        set_writer.writerow(["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore", "set"])
        for i in range(n):
            name = f"{1000 + 37 * i}.jpg"
            for k, folder in enumerate(folders):
                save(root / folder / name, photo(i, (24, 32) if k == 0 else (12, 16)), "JPEG")
            mos = round(1.5 + 0.5 * i, 3)
            zscore = round(20 + 10.0 * i, 3)
            counts = [i, 2, 3, 4, 5]
            scores.writerow([name, *counts, sum(counts), mos, 0.5, zscore])
            split = set_names[i % len(set_names)]
            set_writer.writerow([name, *counts, sum(counts), mos, 0.5, zscore, split])
            official = {"training": "train", "validation": "val", "test": "test"}[split]
            fx.add(f"{folders[0]}/{name}", None, mos, Path(name).stem, split=official if sets else "")
            fx.extra.setdefault("zscore", []).append(zscore)
    if not sets:
        (root / "koniq10k_distributions_sets.csv").unlink()
    return fx


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# -- CLIVE --------------------------------------------------------------------------------------------
def make_clive(root: Path, n: int = 5) -> DbFixture:
    """Images/ (bmp and JPG), Images/trainingImages/ (7), Data/*.mat with 7 + n entries."""
    from scipy.io import savemat

    fx = DbFixture("clive", root)
    names, mos = [], []
    for i in range(7):
        name = f"t{i + 1}.bmp"
        save(root / "Images" / "trainingImages" / name, photo(i, (16, 16)), "BMP")
        names.append(name)
        mos.append(50.0 + i)
    for i in range(n):
        name = f"{10 + i}.bmp" if i % 2 == 0 else f"{10 + i}.JPG"
        save(root / "Images" / name, photo(i + 1), "BMP" if name.endswith("bmp") else "JPEG")
        names.append(name)
        value = round(30.0 + 9.5 * i, 3)
        mos.append(value)
        fx.add(f"Images/{name}", None, value, Path(name).stem)
    cell = np.empty((len(names), 1), dtype=object)
    cell[:, 0] = names
    (root / "Data").mkdir(parents=True, exist_ok=True)
    savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": cell})
    savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.asarray(mos).reshape(1, -1)})
    savemat(root / "Data" / "AllStdDev_release.mat", {"AllStdDev_release": np.ones((1, len(names)))})
    return fx


# -- SPAQ ----------------------------------------------------------------------------------------------
def make_spaq(root: Path, n: int = 4, size=(30, 40)) -> DbFixture:
    from openpyxl import Workbook

    fx = DbFixture("spaq", root)
    book = Workbook()
    sheet = book.active
    sheet.title = "Sheet1"
    sheet.append(["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"])
    for i in range(n):
        name = f"{i + 1:05d}.jpg"
        save(root / "TestImage" / name, photo(i, size), "JPEG")
        value = round(25.0 + 15.25 * i, 2)
        sheet.append([name, value, 50, 51, 52, 53, 54])
        fx.add(f"TestImage/{name}", None, value, Path(name).stem)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    book.save(root / "Annotations" / "MOS and Image attribute scores.xlsx")
    return fx


# -- PieAPP --------------------------------------------------------------------------------------------
def make_pieapp(root: Path, refs=(1, 4), per_ref: int = 3) -> DbFixture:
    """Test references, distorted images and per-image score files (header cells with a leading
    space; the reference itself listed with error 0), plus a train split with only pairwise labels."""
    fx = DbFixture("pieapp", root)
    for r in refs:
        ref = f"ref_{r}.png"
        image = photo(r)
        save(root / "reference_images" / "test" / ref, image)
        lines = ["reference, distorted, error score", f"{ref}, {ref}, 0"]
        fx.add(f"reference_images/test/{ref}", f"reference_images/test/{ref}", 0.0, f"ref_{r}", split="test")
        for k in range(per_ref):
            name = f"distort_{k + 1}.png"
            save(root / "distorted_images" / "test" / f"ref_{r}" / name, degrade(image, k, k + 1, seed=r * 10 + k))
            err = round(0.7 * (k + 1) + 0.1 * r, 3)
            lines.append(f"{ref}, {name}, {err}")
            fx.add(f"distorted_images/test/ref_{r}/{name}", f"reference_images/test/{ref}", err, f"ref_{r}",
                   split="test")
        (root / "labels" / "test").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "test" / f"ref_{r}_per_image_score.csv").write_text("\n".join(lines) + "\n")
    # a train split with pairwise labels only: not part of the table
    save(root / "reference_images" / "train" / "ref_9.png", photo(0))
    save(root / "distorted_images" / "train" / "ref_9" / "distort_1.png", photo(1))
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "train" / "ref_9_pairwise_labels.csv").write_text(
        " reference image, image A, image B, raw preference for A, processed preference for A\n"
        "ref_9.png, distort_1.png, distort_2.png, 0.3, 0.31\n")
    return fx


# -- generic CSV ---------------------------------------------------------------------------------------
def make_generic(root: Path, with_refs: bool = True, n_refs: int = 2, per_ref: int = 2) -> DbFixture:
    """scores.csv with dist,ref,score (or image,score) and paths relative to it."""
    fx = DbFixture("csv", root)
    rows = []
    for r in range(n_refs):
        image = photo(r + 5)
        ref = f"refs/r{r}.png"
        if with_refs:
            save(root / ref, image)
        for k in range(per_ref):
            name = f"imgs/r{r}_{k}.png"
            save(root / name, degrade(image, k, k + 1, seed=r * 10 + k))
            score = round(4.0 - 0.8 * k - 0.1 * r, 3)
            rows.append((name, ref, score))
            fx.add(name, ref if with_refs else None, score, f"r{r}" if with_refs else f"r{r}_{k}")
    with open(root / "scores.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["dist", "ref", "score"] if with_refs else ["image", "score"])
        writer.writerows(rows if with_refs else [(d, s) for d, _, s in rows])
    return fx


BUILDERS = {"tid2013": make_tid, "tid2008": lambda root: make_tid(root, "tid2008", types=(1, 8, 17), levels=(1, 4)),
            "kadid10k": make_kadid, "kadis700k": make_kadis, "live": make_live, "csiq": make_csiq,
            "pipal": make_pipal, "koniq10k": make_koniq, "clive": make_clive, "spaq": make_spaq,
            "pieapp": make_pieapp, "csv": make_generic}


def make_database(fmt: str, root: Path) -> DbFixture:
    """The tiny database of format ``fmt`` under ``root`` (see BUILDERS)."""
    root.mkdir(parents=True, exist_ok=True)
    return BUILDERS[fmt](root)
