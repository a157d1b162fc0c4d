"""GRepQ's data-efficient mode (``iqa train --method grepq-ridge DB``): ridge regression on the
encoders' features, evaluated under the database's protocol, and a fitted model saved to score.

This mode has no epochs, no optimiser and nothing to resume: it is one feature extraction and a few
closed-form fits, so it is its own function rather than a training-loop recipe. What it shares
with evaluation it takes from there: the database readers and the split protocol
(``QualityTable.splits``), the image cache, the sharded scorer (``eval_db.score_table``, which
streams the images once and shares them among torchrun's processes) and stats/correlation.py.

1. Features: per image at full resolution (after the database's own resize, SPAQ 512),
   concat(CLIP RN50 attention-pool output 1024-d, low-level head 128-d) = 1152-d, or the 128-d
   low-level features alone without CLIP weights (models/grepq_ridge.py). They are computed once
   into an HDF5 array cache (io/store.py ``ArrayCache``, purpose "grepq-features"), keyed by both
   encoders' weights hashes and the table's fingerprint (its rows, files, sizes and times, and the
   resize), so another encoder, another database state or another resize is never read stale.
2. Splits (databases.md): synthetic databases 80/20 by reference content, image databases 80/20
   by image, 10 repeats, seeded; databases with an official split use it (its validation part is
   not used). Rows without a human score take no part.
3. Per split: alpha from {0.1, 1, 10, 100} by K-fold cross-validation on the training part only
   (folds grouped by content for synthetic databases, stats/ridge.py), refit on the whole training
   part, predict the test part; SROCC, PLCC (of the predictions themselves: they are on the human
   score's scale already), KROCC and RMSE. The report gives every split and the medians.
4. The saved model (``ridge.pth`` in the run folder) is fitted on every scored image, alpha again
   by cross-validation; ``models.grepq_ridge.load_grepq_ridge`` turns it into a no-reference
   metric. ``splits.csv`` holds the per-split rows.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InvalidInputError
from .stats.ridge import DEFAULT_FOLDS, RIDGE_ALPHAS, RidgeModel, fit_ridge_cv
from .training.grepq_common import RunConfig, Stages, check_positive_int, check_run_name, no_stages

METHOD = "grepq-ridge"
FEATURE_PURPOSE = "grepq-features"
FEATURE_VERSION = 1  # bump when the features of the same weights change
CV_PURPOSE = 31
MIN_TEST = 3  # correlations need three test images
MODEL_FILE, SPLITS_FILE = "ridge.pth", "splits.csv"
SPLIT_COLUMNS = ("repeat", "n_train", "n_test", "alpha", "srocc", "plcc", "krocc", "rmse")


@dataclass(frozen=True)
class GRepQRidgeConfig(RunConfig):
    """Everything a grepq-ridge run depends on. Files go to ``checkpoints_dir/name/``.

    repeats, train_fraction   the random splits (ignored for databases with an official split)
    folds, alphas             the cross-validation choosing alpha on each training part
    cache, no_cache           the database's image cache (None: the one eval-db uses)
    feature_cache             the feature cache (None: beside the image cache, under cache_dir())
    short_side                resize before extracting (None: the database's protocol, 0: full size)
    """

    method = METHOD
    path_fields = ("root", "checkpoints_dir", "cache", "feature_cache", "low_level_weights", "clip_weights",
                   "clip_visual_weights")

    name: str
    root: str
    low_level_weights: str | None = None
    clip_weights: str | None = None
    clip_visual_weights: str | None = None
    format: str = "auto"
    db_options: dict = field(default_factory=dict)
    checkpoints_dir: str = "checkpoints"
    repeats: int = 10
    train_fraction: float = 0.8
    folds: int = DEFAULT_FOLDS
    alphas: tuple[float, ...] = RIDGE_ALPHAS
    seed: int = 0
    device: str = "auto"
    batch_size: int = 8
    num_workers: int | None = None
    cache: str | None = None
    no_cache: bool = False
    feature_cache: str | None = None
    short_side: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))


def validate_ridge_config(cfg: GRepQRidgeConfig) -> GRepQRidgeConfig:
    from .errors import WeightsError

    check_run_name(cfg.name)
    if cfg.low_level_weights is None:
        raise WeightsError("grepq-ridge needs the low-level encoder: pass --low-level-weights PATH (the authors' .tar "
                           "or a checkpoint of 'iqa train --method grepq-low')")
    if cfg.clip_visual_weights is not None and cfg.clip_weights is None:
        raise InvalidInputError("--clip-visual-weights replaces the image tower of --clip-weights: give both")
    if cfg.no_cache and cfg.cache is not None:
        raise InvalidInputError("--cache and --no-cache contradict each other: give one")
    check_positive_int(cfg.repeats, "--repeats", 1)
    check_positive_int(cfg.folds, "--folds", 2)
    check_positive_int(cfg.batch_size, "--batch-size", 1)
    if not 0 < float(cfg.train_fraction) < 1:
        raise InvalidInputError(f"--split is the training fraction, expected a number in (0, 1), got "
                                f"{cfg.train_fraction}")
    if not cfg.alphas or any(not a > 0 for a in cfg.alphas):
        raise InvalidInputError(f"ridge alphas must be positive numbers, got {list(cfg.alphas)}")
    if cfg.num_workers is not None:
        check_positive_int(cfg.num_workers, "--workers", 0)
    return cfg


# ---------------------------------------------------------------------------------------------
# the protocol on given features (pure)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SplitResult:
    """One train/test split: sizes, the alpha cross-validation chose on the training part, test agreement."""

    repeat: int
    n_train: int
    n_test: int
    alpha: float
    srocc: float
    plcc: float
    krocc: float
    rmse: float
    cv_mse: dict[float, float]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cv_mse"] = {str(a): e for a, e in self.cv_mse.items()}
        return d


def _scored(table, rows: np.ndarray) -> np.ndarray:
    return rows[np.isfinite(table.scores[rows])]


def evaluate_ridge(features: np.ndarray, table, seed: int = 0, repeats: int = 10, train_fraction: float = 0.8,
                   alphas: Sequence[float] = RIDGE_ALPHAS, folds: int = DEFAULT_FOLDS) -> list[SplitResult]:
    """Ridge regression from ``features`` (N, d) to ``table``'s scores under its protocol: alpha by
    cross-validation on each training part only (grouped by content for the 'content' protocol),
    test correlations on the held-out part."""
    from .stats.correlation import krocc, plcc, rmse, srocc
    from .training.perceptual import seeded_rng

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) != len(table):
        raise InvalidInputError(f"expected one feature row per image ({len(table)}, d), got {features.shape}")
    y = table.scores
    if int(np.isfinite(y).sum()) < 2 * MIN_TEST:
        raise InvalidInputError(f"{table.root}: {int(np.isfinite(y).sum())} image(s) with a human score; ridge "
                                f"regression and its test correlations need at least {2 * MIN_TEST}")
    groups_all = table.rows["content"].astype(str).to_numpy() if table.protocol == "content" else None
    out = []
    for split in table.splits(seed=seed, repeats=repeats, train_fraction=train_fraction):
        train, test = _scored(table, split.train), _scored(table, split.test)
        if len(test) < MIN_TEST:
            raise InvalidInputError(f"{table.root}: split {split.repeat} tests {len(test)} scored image(s); the "
                                    f"correlations need at least {MIN_TEST} (raise the test share with --split)")
        cv_seed = int(seeded_rng(seed, CV_PURPOSE, split.repeat).integers(2 ** 31))
        groups = None if groups_all is None else groups_all[train]
        model = fit_ridge_cv(features[train], y[train], tuple(alphas), folds, groups, cv_seed)
        pred = model.predict(features[test])
        out.append(SplitResult(split.repeat, len(train), len(test), model.alpha, srocc(pred, y[test]),
                               plcc(pred, y[test]), krocc(pred, y[test]), rmse(pred, y[test]), dict(model.cv_mse)))
    return out


def fit_final_model(features: np.ndarray, table, seed: int = 0, alphas: Sequence[float] = RIDGE_ALPHAS,
                    folds: int = DEFAULT_FOLDS) -> RidgeModel:
    """The model to keep: every scored image, alpha by (grouped) cross-validation on them all."""
    rows = _scored(table, np.arange(len(table)))
    groups = table.rows["content"].astype(str).to_numpy()[rows] if table.protocol == "content" else None
    return fit_ridge_cv(np.asarray(features, dtype=np.float64)[rows], table.scores[rows], tuple(alphas), folds,
                        groups, seed)


# ---------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------

def feature_key(table, short_side: int, hashes: dict[str, str | None], mode: str) -> str:
    """The feature cache key: encoders' weights hashes, the table's fingerprint (rows, files, resize)."""
    from .datasets.cache import table_fingerprint

    doc = {"version": FEATURE_VERSION, "mode": mode, "hashes": hashes,
           "table": table_fingerprint(table, short_side)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def check_feature_sizes(table, store, short_side: int, extractor) -> None:
    """Refuse, before any image is decoded for scoring, images smaller than the extractor takes."""
    from .datasets.cache import ImageDataset, TableImageDataset
    from .eval_db import _file_sizes

    sizes = (ImageDataset(store, "dist").sizes() if store is not None
             else _file_sizes(TableImageDataset(table, "dist", short_side=short_side)))
    small = np.flatnonzero(sizes.min(axis=1) < extractor.min_side) if len(sizes) else []
    if len(small):
        i = int(small[0])
        raise InvalidInputError(f"{table.rows['dist'].iloc[i]} is {sizes[i][1]}x{sizes[i][0]}: GRepQ's features need "
                                f"images of at least {extractor.min_side}x{extractor.min_side} pixels "
                                f"({len(small)} image(s) are smaller); use larger images")


def extract_features(table, extractor, store=None, batch_size: int = 8, device="auto", num_workers: int | None = None,
                     advance=None, short_side: int | None = None) -> np.ndarray:
    """(N, d) float32 features of every row's image, through the sharded scorer (eval_db)."""
    from .eval_db import score_table

    scores = score_table(table, [extractor], store, batch_size, device, num_workers, advance, short_side)
    return np.asarray(scores[extractor.name], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# the whole mode
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RidgeReport:
    """What a grepq-ridge run found: every split, the medians, the saved model and where things are."""

    database: str
    root: str
    protocol: str
    mode: str
    dim: int
    n_images: int
    n_scored: int
    score_name: str
    higher_better: bool
    splits: tuple[SplitResult, ...]
    alpha: float  # the saved model's
    run_dir: Path
    model_path: Path
    splits_csv: Path
    feature_cache: str | None
    features_cached: bool  # True: read from the cache, not computed
    seconds: float
    notes: tuple[str, ...] = ()

    @property
    def median_srocc(self) -> float:
        return float(np.median([s.srocc for s in self.splits]))

    @property
    def median_plcc(self) -> float:
        return float(np.median([s.plcc for s in self.splits]))

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("database", "root", "protocol", "mode", "dim", "n_images", "n_scored",
                                            "score_name", "higher_better", "alpha", "feature_cache", "features_cached",
                                            "seconds")}
        d.update(method=METHOD, median_srocc=self.median_srocc, median_plcc=self.median_plcc,
                 splits=[s.to_dict() for s in self.splits], run_dir=str(self.run_dir), model=str(self.model_path),
                 splits_csv=str(self.splits_csv), notes=list(self.notes))
        return d


def _prepare_run_dir(cfg: GRepQRidgeConfig) -> None:
    from .io.files import check_output_path

    check_output_path(cfg.run_dir, "--checkpoints-dir / --name", folder=True, inputs=[cfg.root])
    if (cfg.run_dir / MODEL_FILE).exists():
        raise InvalidInputError(f"{cfg.run_dir} already holds a ridge model: choose another --name (or delete the "
                                "folder)")


def _cached_features(cfg: GRepQRidgeConfig, table, extractor, hashes, side: int, stages: Stages
                     ) -> tuple[np.ndarray, str | None, bool]:
    """The features from the cache, or extracted (sharded under torchrun) and cached by the main process."""
    from .datasets.cache import default_cache_path, ensure_image_cache, open_image_cache
    from .engine import is_main_process, share_from_main
    from .io.files import check_output_path
    from .io.store import ArrayCache

    path = Path(cfg.feature_cache) if cfg.feature_cache is not None else default_cache_path(table, ".grepq-features")
    cache = ArrayCache(path, FEATURE_PURPOSE, "--feature-cache")
    key = feature_key(table, side, hashes, extractor.mode)

    def read():
        check_output_path(path, "--feature-cache", inputs=[table.root])
        found = cache.read([key]).get(key)
        return found if found is not None and found.shape == (len(table), extractor.dim) else None

    hit = share_from_main(read)
    if hit is not None and np.isfinite(hit).all():
        return hit, str(path), True
    store = None
    if not cfg.no_cache:
        image_cache = Path(cfg.cache) if cfg.cache is not None else default_cache_path(table)

        def build() -> str:
            check_output_path(image_cache, "--cache", inputs=[table.root])
            with stages("caching images", len(table.image_paths()), "images") as advance:
                built, _ = ensure_image_cache(table, image_cache, progress=advance, short_side=side)
            built.close()
            return str(image_cache)

        store = open_image_cache(share_from_main(build), table, side)
    check_feature_sizes(table, store, side, extractor)
    with stages("GRepQ features", len(table), "images") as advance:
        features = extract_features(table, extractor, store, cfg.batch_size, cfg.device, cfg.num_workers, advance,
                                    side)
    if is_main_process():
        cache.write({key: features})
    return features, str(path), False


def fit_grepq_ridge(config: GRepQRidgeConfig, stages: Stages = no_stages) -> RidgeReport:
    """The data-efficient mode; see the module docstring. Under torchrun call it on every process:
    the extraction is shared, the fits are repeated (cheap), only the main process writes."""
    from .datasets.cache import resolve_short_side
    from .datasets.formats import read_database
    from .engine import is_main_process, share_from_main
    from .io.files import OutputLock, write_csv
    from .models.grepq import load_high_level_encoder, load_low_level_encoder
    from .models.grepq_ridge import GRepQFeatureExtractor, encoder_hashes, ridge_payload
    from .training.loop import write_checkpoint

    start = time.perf_counter()
    cfg = validate_ridge_config(config)
    table = read_database(cfg.root, cfg.format, **dict(cfg.db_options))
    if not table.has_scores:
        raise InvalidInputError(f"{table.root}: {table.database} has no human scores here, so there is nothing to "
                                "regress on (ridge mode needs a database with MOS/DMOS)")
    side = resolve_short_side(table, cfg.short_side)
    share_from_main(lambda: _prepare_run_dir(cfg))
    low = load_low_level_encoder(cfg.low_level_weights)
    high = load_high_level_encoder(cfg.clip_weights, cfg.clip_visual_weights) if cfg.clip_weights else None
    extractor = GRepQFeatureExtractor(low, high)
    hashes = encoder_hashes(low, high)
    features, cache_path, cached = _cached_features(cfg, table, extractor, hashes, side, stages)

    splits = evaluate_ridge(features, table, cfg.seed, cfg.repeats, cfg.train_fraction, cfg.alphas, cfg.folds)
    final = fit_final_model(features, table, cfg.seed, cfg.alphas, cfg.folds)
    notes = list(table.warnings)
    if table.protocol == "official":
        val = int(len(table.splits()[0].val))
        notes.append("official split: trained on 'train', tested on 'test'" + (f"; {val} 'val' image(s) unused"
                                                                                 if val else ""))
    if high is None:
        notes.append("low-level features only (128-d): no --clip-weights given")
    report = RidgeReport(table.database, str(table.root), table.protocol, extractor.mode, extractor.dim, len(table),
                         int(np.isfinite(table.scores).sum()), table.score_name, bool(table.higher_better),
                         tuple(splits), final.alpha, cfg.run_dir, cfg.run_dir / MODEL_FILE,
                         cfg.run_dir / SPLITS_FILE, cache_path, cached, 0.0, tuple(notes))
    if is_main_process():
        sources = {"low_level_weights": str(Path(cfg.low_level_weights).resolve()),
                   "clip_weights": str(Path(cfg.clip_weights).resolve()) if cfg.clip_weights else None,
                   "clip_visual_weights": str(Path(cfg.clip_visual_weights).resolve())
                   if cfg.clip_visual_weights else None}
        summary = {"median_srocc": report.median_srocc, "median_plcc": report.median_plcc,
                   "protocol": table.protocol, "n_splits": len(splits), "config": cfg.to_dict()}
        lock = OutputLock(cfg.run_dir, f"iqa train --method {METHOD}")
        lock.acquire()
        try:
            write_csv(report.splits_csv, SPLIT_COLUMNS,
                      [[getattr(s, c) if c in ("repeat", "n_train", "n_test") else f"{getattr(s, c):.6g}"
                        for c in SPLIT_COLUMNS] for s in splits])
            write_checkpoint(report.model_path, ridge_payload(final.coef, final.intercept, final.alpha, extractor,
                                                              sources, hashes, table, {"report": summary}))
        finally:
            lock.release()
    return replace(report, seconds=time.perf_counter() - start)
