"""The database formats iqa reads: a registry (name, kind, options, reader, detector), ``--format
auto`` detection, and the one entry point ``read_database``.

Detection looks only at names (and TID's score file, to tell 2013 from 2008): it says which
layout a folder has, and the reader then checks the content, so a file of the wrong kind under
the right name (a ``dmos.csv`` from another database) gets the reader's specific one-line error
rather than a vague "no layout matches".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InvalidInputError
from .layout import DOCS_HINT, Folder, listing
from .table import QualityTable


@dataclass(frozen=True)
class FormatOption:
    """One reader option: ``read_database(root, format, name=value)``; ``--db-option name=value``."""

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    type: str = "str"  # "str" or "bool"

    def to_dict(self) -> dict:
        return {"name": self.name, "default": self.default, "help": self.help, "choices": list(self.choices),
                "type": self.type}


@dataclass(frozen=True)
class DatabaseFormat:
    name: str
    title: str
    kind: str  # what QualityTable.kind its tables have ("synthetic", "authentic", ...; "any" for csv)
    references: bool  # its images pair with reference images (full-reference metrics can run)
    description: str
    reader: Callable[..., QualityTable] = field(repr=False)
    detect: Callable[[Path], bool] = field(repr=False)
    options: tuple[FormatOption, ...] = ()

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "kind": self.kind, "references": self.references,
                "description": self.description, "options": [o.to_dict() for o in self.options]}


# -- detectors: names only --------------------------------------------------------------------------
def _has(root: Path, *names: str, folder: bool = False) -> bool:
    entries = Folder(root)
    for name in names:
        path = entries.get(name)
        if path is None or (path.is_dir() != folder):
            return False
    return True


def _is_tid(root: Path) -> bool:
    return _has(root, "reference_images", "distorted_images", folder=True) and \
        (_has(root, "mos_with_names.txt") or _has(root, "mos.txt")) and not _has(root, "labels", folder=True)


def _detect_tid(edition: str) -> Callable[[Path], bool]:
    def detect(root: Path) -> bool:
        from .tid import tid_edition

        return _is_tid(root) and tid_edition(root) == edition

    return detect


def _detect_kadid(root: Path) -> bool:
    from .kadid import LISTING_FILE, SCORE_FILE

    return _has(root, "images", folder=True) and (_has(root, SCORE_FILE) or _has(root, LISTING_FILE))


def _detect_kadis(root: Path) -> bool:
    from .kadid import KADIS_FILE

    return _has(root, "ref_imgs", folder=True) and _has(root, KADIS_FILE)


def _detect_live(root: Path) -> bool:
    return _has(root, "refimgs", "jp2k", folder=True) and (_has(root, "dmos_realigned.mat") or _has(root, "dmos.mat"))


def _detect_csiq(root: Path) -> bool:
    return _has(root, "src_imgs", "dst_imgs", folder=True)


def _detect_pipal(root: Path) -> bool:
    from .pipal import pipal_folders

    ref, labels, _ = pipal_folders(root)
    return ref is not None and labels is not None


def _detect_koniq(root: Path) -> bool:
    from .koniq import SCORE_FILE

    return _has(root, SCORE_FILE)


def _detect_clive(root: Path) -> bool:
    data = Folder(root).get("Data")
    return _has(root, "Images", folder=True) and data is not None and data.is_dir() and \
        _has(data, "AllMOS_release.mat")


def _detect_spaq(root: Path) -> bool:
    from .spaq import spaq_annotations

    return _has(root, "TestImage", folder=True) and spaq_annotations(root) is not None


def _detect_pieapp(root: Path) -> bool:
    from .pieapp import pieapp_score_files

    return _has(root, "reference_images", "distorted_images", folder=True) and bool(pieapp_score_files(root))


def _detect_csv(root: Path) -> bool:
    from .generic import generic_csv

    return generic_csv(root) is not None


def _lazy(module: str, function: str) -> Callable[..., QualityTable]:
    def read(root, **options):
        import importlib

        return getattr(importlib.import_module(f".{module}", __package__), function)(root, **options)

    read.__name__ = function
    return read


_COLUMN_HELP = "header of the column holding {} (default: found by its usual names)"
FORMATS: dict[str, DatabaseFormat] = {f.name: f for f in (
    DatabaseFormat("tid2013", "TID2013", "synthetic", True,
                   "25 references x 24 types x 5 levels; mos_with_names.txt; MOS 0-9, higher = better",
                   _lazy("tid", "read_tid2013"), _detect_tid("tid2013")),
    DatabaseFormat("tid2008", "TID2008", "synthetic", True,
                   "25 references x 17 types x 4 levels; mos_with_names.txt or mos.txt; MOS 0-9, higher = better",
                   _lazy("tid", "read_tid2008"), _detect_tid("tid2008")),
    DatabaseFormat("kadid10k", "KADID-10k", "synthetic", True,
                   "images/ + dmos.csv (a MOS 1-5, higher = better), or iqa distort's images/ + listing.csv "
                   "(type, level, no scores)",
                   _lazy("kadid", "read_kadid10k"), _detect_kadid,
                   (FormatOption("listing", None, "score or listing CSV to read (default: dmos.csv, else "
                                                  "listing.csv)"),)),
    DatabaseFormat("kadis700k", "KADIS-700k", "pristine", False,
                   "ref_imgs/ + kadis700k_ref_imgs.csv: pristine images with their distortion type, no scores",
                   _lazy("kadid", "read_kadis700k"), _detect_kadis),
    DatabaseFormat("live", "LIVE IQA release 2", "synthetic", True,
                   "refimgs/ + 5 distortion folders + .mat files; DMOS, lower = better; orgs dropped (779 images)",
                   _lazy("live", "read_live"), _detect_live,
                   (FormatOption("dmos", "realigned", "which DMOS: realigned (dmos_realigned.mat, dmos_new) or "
                                                      "original (dmos.mat)", ("realigned", "original")),)),
    DatabaseFormat("csiq", "CSIQ", "synthetic", True,
                   "src_imgs/ + dst_imgs/<type>/ + csiq.DMOS.xlsx or csiq_label.txt; DMOS 0-1, lower = better",
                   _lazy("csiq", "read_csiq"), _detect_csiq,
                   (FormatOption("labels", None, "score file to read: a spreadsheet or a '<name> <dmos>' text "
                                                 "export (default: csiq.DMOS.xlsx, else csiq_label.txt)"),)),
    DatabaseFormat("pipal", "PIPAL (training set)", "restoration", True,
                   "Train_Ref/ + Distortion_*/ + Train_Label/*.txt; Elo, higher = better",
                   _lazy("pipal", "read_pipal"), _detect_pipal),
    DatabaseFormat("koniq10k", "KonIQ-10k", "authentic", False,
                   "1024x768/ or 512x384/ + koniq10k_scores_and_distributions.csv; MOS 1-5 (or MOS_zscore 0-100), "
                   "higher = better; official sets",
                   _lazy("koniq", "read_koniq10k"), _detect_koniq,
                   (FormatOption("resolution", "auto", "image folder: auto (1024x768 when present), 1024x768, "
                                                       "512x384", ("auto", "1024x768", "512x384")),
                    FormatOption("score", "MOS", "score column: MOS (1-5) or MOS_zscore (0-100)",
                                 ("MOS", "MOS_zscore")))),
    DatabaseFormat("clive", "LIVE In the Wild Challenge (CLIVE)", "authentic", False,
                   "Images/ + Data/AllImages_release.mat, AllMOS_release.mat; MOS 0-100, higher = better; the 7 "
                   "training images dropped",
                   _lazy("clive", "read_clive"), _detect_clive),
    DatabaseFormat("spaq", "SPAQ", "authentic", False,
                   "TestImage/ + Annotations/MOS and Image attribute scores.xlsx; MOS 0-100, higher = better; "
                   "shorter side resized to 512",
                   _lazy("spaq", "read_spaq"), _detect_spaq),
    DatabaseFormat("pieapp", "PieAPP (test set)", "synthetic", True,
                   "reference_images/test/ + distorted_images/test/ + labels/test/*_per_image_score.csv; error "
                   "score, lower = better",
                   _lazy("pieapp", "read_pieapp"), _detect_pieapp),
    DatabaseFormat("csv", "generic CSV", "any", True,
                   "one CSV: dist,ref,score (full-reference) or image,score; paths relative to the CSV",
                   _lazy("generic", "read_csv_database"), _detect_csv,
                   (FormatOption("csv", None, "the CSV under ROOT (default: the only .csv there, or ROOT itself)"),
                    FormatOption("dist_column", None, _COLUMN_HELP.format("the image paths")),
                    FormatOption("ref_column", None, _COLUMN_HELP.format("the reference paths")),
                    FormatOption("score_column", None, _COLUMN_HELP.format("the scores")),
                    FormatOption("content_column", None, _COLUMN_HELP.format("content ids")),
                    FormatOption("type_column", None, _COLUMN_HELP.format("distortion types")),
                    FormatOption("level_column", None, _COLUMN_HELP.format("distortion levels")),
                    FormatOption("split_column", None, _COLUMN_HELP.format("the official split")),
                    FormatOption("higher_better", None, "true if a higher score means better quality (default: "
                                                        "true unless the column is DMOS)", (), "bool"),
                    FormatOption("score_name", None, "what the score is called (default: its column header)"),
                    FormatOption("kind", None, "synthetic | authentic | ... (default: synthetic with references)"),
                    FormatOption("protocol", None, "content | image | official (default: official with a split "
                                                   "column, else content with references, else image)",
                                 ("content", "image", "official")))),
)}
_DETECT_LAST = ("csv",)  # tried only when no specific layout matches


def list_formats() -> list[DatabaseFormat]:
    """Every format, in the order `iqa` lists them."""
    return list(FORMATS.values())


def get_format(name: str) -> DatabaseFormat:
    key = str(name).strip().lower().replace("-", "")
    aliases = {"kadid": "kadid10k", "kadis": "kadis700k", "koniq": "koniq10k", "live2": "live",
               "livec": "clive", "livechallenge": "clive", "generic": "csv"}
    key = aliases.get(key, key)
    if key not in FORMATS:
        raise InvalidInputError(f"unknown database format {name!r}: choose auto or one of {', '.join(FORMATS)}")
    return FORMATS[key]


def parse_format_options(pairs: Sequence[str]) -> dict[str, str]:
    """``["dmos=original", "score=MOS_zscore"]`` -> ``{"dmos": "original", ...}`` (CLI ``--db-option``)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"database option {pair!r}: expected NAME=VALUE, e.g. dmos=original")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def check_options(fmt: DatabaseFormat, options: dict[str, Any]) -> dict[str, Any]:
    """Options known to the format, with choices checked and booleans parsed."""
    known = {o.name: o for o in fmt.options}
    out = {}
    for key, value in options.items():
        if key not in known:
            takes = f"its options: {', '.join(known)}" if known else "it takes none"
            raise InvalidInputError(f"format {fmt.name} has no option {key!r} ({takes})")
        spec = known[key]
        if value is not None and spec.type == "bool" and not isinstance(value, bool):
            text = str(value).strip().lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise InvalidInputError(f"option {key}={value!r}: expected true or false")
            value = text in ("true", "1", "yes")
        if value is not None and spec.choices:
            match = {c.lower(): c for c in spec.choices}.get(str(value).lower())
            if match is None:
                raise InvalidInputError(f"option {key}={value!r} of format {fmt.name}: choose one of "
                                        f"{', '.join(spec.choices)}")
            value = match
        out[key] = value
    return out


def _matches(root: Path) -> list[str]:
    if root.is_file():
        return ["csv"] if _detect_csv(root) else []
    found = [name for name, fmt in FORMATS.items() if name not in _DETECT_LAST and fmt.detect(root)]
    if not found:
        found = [name for name in _DETECT_LAST if FORMATS[name].detect(root)]
    return found


def detect_format(root: str | Path) -> str:
    """The name of the layout ``root`` holds; a one-line error when it matches none (with a hint
    when a folder inside it matches) or several."""
    root = Path(root)
    if not root.exists():
        raise InvalidInputError(f"{root}: no such file or folder (give the database folder)")
    found = _matches(root)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise InvalidInputError(f"{root}: matches several layouts ({', '.join(found)}); choose one with --format")
    entries = Folder(root)
    if _has(root, "2afc", folder=True) or _has(root, "jnd", folder=True):
        raise InvalidInputError(f"{root}: a BAPPS folder (2afc/, jnd/): evaluate it with iqa eval-bapps")
    inner = [(p, _matches(p)) for p in entries.folders()]
    inner = [(p, m[0]) for p, m in inner if len(m) == 1]
    if inner:
        path, name = inner[0]
        raise InvalidInputError(f"{root}: matches no database layout, but {path.name}/ inside it holds {name}: "
                                f"pass {path}")
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in entries.entries.values())
    raise InvalidInputError(f"{root}: matches no database layout (found {listing(names) or 'nothing'}); name the "
                            f"format with --format ({', '.join(FORMATS)}; {DOCS_HINT})")


def read_database(root: str | Path, format: str = "auto", **options) -> QualityTable:
    """Read a database into a :class:`QualityTable`. ``format="auto"`` detects the layout (the
    table's ``database`` says which, ``detected`` is True); ``options`` are the format's own
    (see :data:`FORMATS`), e.g. ``read_database(root, "live", dmos="original")``."""
    detected = str(format).strip().lower() == "auto"
    fmt = FORMATS[detect_format(root)] if detected else get_format(format)
    options = {k: v for k, v in check_options(fmt, options).items() if v is not None}
    table = fmt.reader(Path(root), **options)
    if detected:
        import dataclasses

        table = dataclasses.replace(table, detected=True)
    return table
