"""The one table every database reader returns, and evaluation and training take.

Readers never score and scorers never parse folders: whatever the layout on disk (TID's text file,
LIVE's ``.mat`` files, CSIQ's spreadsheet, ...), a reader hands back a :class:`QualityTable`, one
row per image to score, with the facts the protocols need: which reference it pairs with, which
way the human score points, which reference content it shows (so that splits never put one
content on both sides), and the distortion type and level where the database knows them.

Row columns (a pandas DataFrame, in :data:`COLUMNS` order):

    name       str      the distorted image's path relative to ``root`` (POSIX), a stable display id
    dist       str      absolute path of the image to score
    ref        object   absolute path of its reference image, or None (no-reference databases)
    score      float64  the human score (MOS, DMOS, Elo, ...); NaN when the database has none
    content    str      reference content id (the reference's stem; the image's own stem when
                        the database has no references, so every image is its own content)
    type       str      distortion type id as the database spells it ("01", "jpeg", ...); "" unknown
    type_name  str      the type's readable name where the database documents one, else ""
    level      int64    distortion level, counted from 1; 0 when unknown
    split      str      official split ("train", "val", "test") where the database has one, else ""
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import InvalidInputError

COLUMNS = ("name", "dist", "ref", "score", "content", "type", "type_name", "level", "split")
KINDS = ("synthetic", "authentic", "restoration", "pristine", "generic")
PROTOCOLS = ("content", "image", "official")
SPLIT_NAMES = ("train", "val", "test")
# spellings of the official split names seen in the databases' files
_SPLIT_ALIASES = {"train": "train", "training": "train", "trainset": "train",
                  "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "testing": "test", "testset": "test"}


def normalise_split(value: str) -> str:
    """'training' -> 'train', 'validation' -> 'val', 'Test' -> 'test'; anything else is kept
    (lower-cased) so an unusual split name is not lost."""
    text = str(value).strip().lower()
    return _SPLIT_ALIASES.get(text, text)


@dataclass(frozen=True, eq=False)
class Split:
    """One train/test partition of a table's rows (row positions, sorted). ``val`` is empty
    except for official splits that have a validation set."""

    repeat: int
    train: np.ndarray
    test: np.ndarray
    val: np.ndarray

    def to_dict(self) -> dict:
        return {"repeat": self.repeat, "train": self.train.tolist(), "test": self.test.tolist(),
                "val": self.val.tolist()}


@dataclass(frozen=True, eq=False)
class QualityTable:
    """One image-quality database read from disk: metadata + one row per image (see module doc).

    ``higher_better`` says which way ``score`` points (KADID's "dmos" column is really a MOS and
    reads True; LIVE and CSIQ DMOS read False). ``protocol`` is how the database is split for
    evaluation: ``content`` (80/20 by reference content, synthetic databases), ``image`` (80/20 by
    image, authentic ones) or ``official`` (the ``split`` column). ``short_side`` is the shorter
    image side the database's authors resize to before scoring (SPAQ: 512), None when they do not.
    """

    database: str
    root: Path
    kind: str
    score_name: str
    higher_better: bool
    score_range: tuple[float, float] | None
    protocol: str
    rows: pd.DataFrame
    options: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    short_side: int | None = None
    detected: bool = False  # the format was found by read_database(format="auto")

    def __post_init__(self):
        missing = [c for c in COLUMNS if c not in self.rows.columns]
        if missing:
            raise ValueError(f"QualityTable rows lack column(s) {', '.join(missing)}")
        if self.kind not in KINDS:
            raise ValueError(f"QualityTable kind {self.kind!r} is not one of {KINDS}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"QualityTable protocol {self.protocol!r} is not one of {PROTOCOLS}")

    # -- size and facts -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def has_references(self) -> bool:
        """True when every row has a reference image (full-reference metrics can score it all)."""
        return len(self.rows) > 0 and bool(self.rows["ref"].notna().all())

    @property
    def has_scores(self) -> bool:
        """True when at least one row has a human score (a distort listing or KADIS has none)."""
        return bool(np.isfinite(self.scores).any())

    @property
    def has_types(self) -> bool:
        return bool((self.rows["type"] != "").any())

    @property
    def has_official_split(self) -> bool:
        return bool((self.rows["split"] != "").any())

    @property
    def scores(self) -> np.ndarray:
        """float64 (N,) human scores, NaN where absent."""
        return self.rows["score"].to_numpy(dtype=np.float64)

    @property
    def contents(self) -> list[str]:
        """The distinct content ids, sorted."""
        return sorted(self.rows["content"].unique().tolist())

    @property
    def types(self) -> dict[str, str]:
        """Distortion type id -> readable name ("" when unnamed), in order of first appearance."""
        known = self.rows.loc[self.rows["type"] != "", ["type", "type_name"]].drop_duplicates("type")
        return dict(zip(known["type"], known["type_name"]))

    def reference_paths(self) -> list[str]:
        """The distinct reference paths, in order of first appearance."""
        refs = self.rows["ref"].dropna()
        return list(dict.fromkeys(refs.tolist()))

    def image_paths(self) -> list[str]:
        """Every distinct file a run reads (distorted images, then references), in first-appearance order."""
        return list(dict.fromkeys([*self.rows["dist"].tolist(), *self.reference_paths()]))

    # -- selection ------------------------------------------------------------------------------
    def select(self, rows: Sequence[int] | np.ndarray) -> "QualityTable":
        """A table of the given row positions (in that order), e.g. one split's test rows."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"row positions outside [0, {len(self)})")
        picked = self.rows.iloc[rows].reset_index(drop=True)
        return _replace(self, rows=picked)

    def head(self, n: int) -> "QualityTable":
        return self.select(np.arange(min(int(n), len(self))))

    def splits(self, seed: int = 0, repeats: int = 10, train_fraction: float = 0.8,
               protocol: str | None = None) -> list[Split]:
        """Train/test partitions following the database's protocol (or ``protocol``).

        ``content``: each repeat shuffles the reference contents with its own generator seeded by
        (seed, repeat) and gives the first round(train_fraction x contents) to train: no content
        ever has rows on both sides. ``image``: the same over single images. ``official``: one
        partition from the ``split`` column (repeats ignored); rows with another split value are
        left out. Row positions come back sorted.
        """
        protocol = self.protocol if protocol is None else protocol
        if protocol not in PROTOCOLS:
            raise InvalidInputError(f"split protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
        if protocol == "official":
            return [self._official_split()]
        if isinstance(repeats, bool) or int(repeats) != repeats or repeats < 1:
            raise InvalidInputError(f"repeats {repeats}: expected a whole number >= 1")
        if not 0.0 < float(train_fraction) < 1.0:
            raise InvalidInputError(f"train fraction {train_fraction}: expected a number between 0 and 1 (e.g. 0.8)")
        if protocol == "content":
            groups = self.rows["content"].astype(str).to_numpy()
        else:
            groups = np.arange(len(self)).astype(str)
        names, inverse = np.unique(groups, return_inverse=True)
        n = len(names)
        if n < 2:
            raise InvalidInputError(f"{self.root}: {n} {'content' if protocol == 'content' else 'image'}(s) only; a "
                                    "train/test split needs at least 2")
        n_train = min(n - 1, max(1, int(math.floor(float(train_fraction) * n + 0.5))))
        out = []
        for repeat in range(int(repeats)):
            order = np.random.default_rng((int(seed), repeat)).permutation(n)
            in_train = np.zeros(n, dtype=bool)
            in_train[order[:n_train]] = True
            mask = in_train[inverse]
            out.append(Split(repeat, np.flatnonzero(mask), np.flatnonzero(~mask), np.zeros(0, dtype=np.int64)))
        return out

    def _official_split(self) -> Split:
        split = self.rows["split"].to_numpy()
        if not (split != "").any():
            raise InvalidInputError(f"{self.root}: {self.database} has no official split here; use the "
                                    "'content' or 'image' protocol")
        parts = {name: np.flatnonzero(split == name) for name in SPLIT_NAMES}
        return Split(0, parts["train"], parts["test"], parts["val"])

    # -- output ---------------------------------------------------------------------------------
    def records(self) -> list[dict]:
        """One dict per row (paths relative to root; ref None, score None when absent)."""
        out = []
        root = self.root
        for row in self.rows.itertuples(index=False):
            score = float(row.score)
            out.append({"name": row.name, "dist": row.name, "ref": relative_path(row.ref, root),
                        "score": score if math.isfinite(score) else None, "content": row.content,
                        "type": row.type, "type_name": row.type_name, "level": int(row.level), "split": row.split})
        return out

    def to_dict(self, images: bool = False) -> dict:
        """Metadata, counts and (with ``images``) one record per row."""
        split_counts = self.rows.loc[self.rows["split"] != "", "split"].value_counts()
        doc: dict[str, Any] = {
            "format": self.database, "root": str(self.root), "kind": self.kind, "score_name": self.score_name,
            "higher_better": self.higher_better,
            "score_range": None if self.score_range is None else list(self.score_range),
            "protocol": self.protocol, "n": len(self), "n_contents": int(self.rows["content"].nunique()),
            "n_references": len(self.reference_paths()), "has_references": self.has_references,
            "has_scores": self.has_scores, "types": self.types,
            "splits": {str(k): int(v) for k, v in split_counts.items()},
            "options": dict(self.options), "short_side": self.short_side, "detected": self.detected,
            "warnings": list(self.warnings),
        }
        if images:
            doc["images"] = self.records()
        return doc

    def __repr__(self) -> str:
        return (f"QualityTable({self.database!r}, root={str(self.root)!r}, n={len(self)}, kind={self.kind!r}, "
                f"score={self.score_name!r} {'higher' if self.higher_better else 'lower'} better, "
                f"protocol={self.protocol!r})")


def _replace(table: QualityTable, **changes) -> QualityTable:
    import dataclasses

    return dataclasses.replace(table, **changes)


def relative_path(path, root: Path | str) -> str | None:
    """``path`` relative to ``root`` as a POSIX string (None stays None). A plain prefix cut for
    paths under root (readers build them that way; os.path.relpath is slow over 100,000 rows)."""
    if path is None or (isinstance(path, float) and math.isnan(path)):
        return None
    text, prefix = str(path), os.path.join(str(root), "")
    if text.startswith(prefix):
        return text[len(prefix):].replace(os.sep, "/")
    try:
        return Path(os.path.relpath(text, root)).as_posix()
    except ValueError:  # another drive on Windows
        return Path(text).as_posix()


def make_rows(root: Path, dist: Iterable, ref: Iterable | None = None, score: Iterable | None = None,
              content: Iterable | None = None, type: Iterable | None = None, type_name: Iterable | None = None,
              level: Iterable | None = None, split: Iterable | None = None) -> pd.DataFrame:
    """Build the row DataFrame with the right dtypes; absent columns get their 'unknown' value.
    ``content`` defaults to the reference's stem, or the image's own stem without a reference."""
    root = Path(root)
    dist = [str(p) for p in dist]
    n = len(dist)

    def column(values, default):
        if values is None:
            return [default] * n
        values = list(values)
        if len(values) != n:
            raise ValueError(f"column of {len(values)} values for {n} rows")
        return values

    refs = [None if r is None else str(r) for r in column(ref, None)]
    scores = np.asarray(column(score, math.nan), dtype=np.float64)
    if content is None:
        content = [Path(r if r is not None else d).stem for d, r in zip(dist, refs)]
    names = [relative_path(d, root) for d in dist]
    frame = pd.DataFrame({
        "name": pd.Series(names, dtype=object),
        "dist": pd.Series(dist, dtype=object),
        "ref": pd.Series(refs, dtype=object),
        "score": scores,
        "content": pd.Series([str(c) for c in column(content, "")], dtype=object),
        "type": pd.Series([str(t) for t in column(type, "")], dtype=object),
        "type_name": pd.Series([str(t) for t in column(type_name, "")], dtype=object),
        "level": np.asarray(column(level, 0), dtype=np.int64),
        "split": pd.Series([normalise_split(s) if s else "" for s in column(split, "")], dtype=object),
    })
    return frame
