"""GRepQ's data-efficient model: ridge regression on the encoders' whole-image features.

``GRepQFeatureExtractor`` gives, per image at full resolution, concat(CLIP attention-pool output
1024-d, low-level head 128-d) = 1152-d (``GRepQFeatures``), or the 128-d low-level features alone
when no CLIP weights are given. It follows the metric calling convention (``extractor(img)``) so
the evaluation engine (eval_db.score_table) can stream a database through it, but its "score" is
an (N, d) feature matrix.

``GRepQRidge`` is a no-reference metric: the extractor followed by the fitted linear map, so it
predicts the human score of the database it was fitted on, on that database's scale and in its
direction (``lower_better`` is True for a DMOS-fitted model). ``load_grepq_ridge`` reads the file
``iqa train --method grepq-ridge`` writes (``ridge.pth``), which records the encoders' files and
their weights hashes: the encoders are loaded from those files (or the ones given) and must hash
the same, so a model is never applied to features it was not fitted on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError, WeightsError
from .base import QualityMetric
from .grepq import (CLIP_DIM, LOW_LEVEL_DIM, MODE_BOTH, MODE_LOW_ONLY, HighLevelEncoder, LowLevelEncoder,
                    load_high_level_encoder, load_low_level_encoder)

RIDGE_FAMILY = "grepq-ridge"  # the file is the project's checkpoint format (weights.CHECKPOINT_FORMAT) of this family
MIN_SIDE = 32  # CLIP RN50 downsamples by 32; the extractor refuses smaller images for both modes alike


class GRepQFeatureExtractor(QualityMetric):
    """(N, 3, H, W) in [0, 1] -> (N, d) float32 features, d = 1152 (with CLIP) or 128; eval mode always."""

    name = "grepq-features"
    kind = "nr"
    lower_better = False
    half_precision = True
    min_side = MIN_SIDE

    def __init__(self, low_level: LowLevelEncoder, high_level: HighLevelEncoder | None = None) -> None:
        super().__init__()
        self.low_level = low_level
        self.high_level = high_level
        self.eval()

    def train(self, mode: bool = True) -> "GRepQFeatureExtractor":
        return super().train(False)

    @property
    def mode(self) -> str:
        return MODE_BOTH if self.high_level is not None else MODE_LOW_ONLY

    @property
    def dim(self) -> int:
        return LOW_LEVEL_DIM + (CLIP_DIM if self.high_level is not None else 0)

    def check_size(self, hw: tuple[int, int], name: str = "images") -> None:
        h, w = int(hw[0]), int(hw[1])
        if min(h, w) < self.min_side:
            raise InvalidInputError(f"{name} are {w}x{h}: GRepQ's features need images of at least "
                                    f"{self.min_side}x{self.min_side} pixels; use larger images")

    def meta(self) -> dict[str, Any]:
        return {"metric": self.name, "mode": self.mode}

    def score(self, img: torch.Tensor) -> torch.Tensor:
        self.check_size(tuple(img.shape[2:]))
        low = self.low_level(img)
        if self.high_level is None:
            return low.float()
        return torch.cat([self.high_level(img), low], dim=1).float()


class GRepQRidge(QualityMetric):
    """GRepQ's data-efficient predictor: ``metric(img)`` -> (N,) predicted human scores.

    ``coef`` (d,) and ``intercept`` are kept as float64 buffers; ``higher_better`` is the direction of
    the score it was fitted on (``lower_better`` is its opposite)."""

    name = "grepq-ridge"
    kind = "nr"
    half_precision = True  # the encoders; the ridge product is float64

    def __init__(self, extractor: GRepQFeatureExtractor, coef, intercept: float, higher_better: bool = True,
                 info: dict | None = None) -> None:
        super().__init__()
        coef = torch.as_tensor(np.asarray(coef, dtype=np.float64))
        if coef.shape != (extractor.dim,):
            raise WeightsError(f"ridge coefficients of shape {tuple(coef.shape)} do not fit {extractor.mode} "
                               f"features ({extractor.dim},): the encoders differ from the ones it was fitted on")
        self.extractor = extractor
        self.register_buffer("coef", coef)
        self.register_buffer("intercept", torch.tensor(float(intercept), dtype=torch.float64))
        self.lower_better = not bool(higher_better)
        self.info = dict(info or {})

    def train(self, mode: bool = True) -> "GRepQRidge":
        return super().train(False)

    def check_size(self, hw: tuple[int, int], name: str = "images") -> None:
        self.extractor.check_size(hw, name)

    def meta(self) -> dict[str, Any]:
        return {"metric": self.name, "mode": self.extractor.mode, "fitted_on": self.info.get("database"),
                "score_name": self.info.get("score_name"), "alpha": self.info.get("alpha")}

    def score(self, img: torch.Tensor) -> torch.Tensor:
        features = self.extractor.score(img).double()
        return (features @ self.coef + self.intercept).float()


def ridge_payload(coef: np.ndarray, intercept: float, alpha: float, extractor: GRepQFeatureExtractor,
                  sources: dict[str, str | None], hashes: dict[str, str | None], table, extra: dict | None = None
                  ) -> dict[str, Any]:
    """What ``ridge.pth`` holds (plain tensors and strings: torch.load(weights_only=True) reads it). It
    is the project's checkpoint format with ``family`` "grepq-ridge", so a ``--checkpoint`` that
    names it selects the grepq-ridge metric."""
    from ..weights import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION

    return {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, "family": RIDGE_FAMILY,
            "mode": extractor.mode,
            "coef": torch.as_tensor(np.asarray(coef, dtype=np.float64)), "intercept": float(intercept),
            "alpha": float(alpha), "sources": dict(sources), "hashes": dict(hashes), "database": table.database,
            "root": str(table.root), "score_name": table.score_name, "higher_better": bool(table.higher_better),
            **(extra or {})}


def encoder_hashes(low: LowLevelEncoder, high: HighLevelEncoder | None) -> dict[str, str | None]:
    """The weights hashes a ridge model is tied to (models/mvg.weights_hash)."""
    from .mvg import weights_hash

    return {"low_level": weights_hash(low), "high_level": None if high is None else weights_hash(high.visual)}


def load_grepq_ridge(checkpoint: str | Path, low_level_weights: str | Path | None = None,
                     clip_weights: str | Path | None = None, clip_visual_weights: str | Path | None = None
                     ) -> GRepQRidge:
    """The ridge model of ``checkpoint`` with its encoders, from the files given or else the files
    recorded in it; their weights must hash as they did when the model was fitted."""
    from ..weights import CHECKPOINT_FORMAT, read_state_file

    path = Path(checkpoint)
    raw = read_state_file(path)
    ours = isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT and raw.get("family") == RIDGE_FAMILY
    if not ours or not torch.is_tensor(raw.get("coef")):
        raise WeightsError(f"{path}: not a GRepQ ridge model (expected the ridge.pth written by 'iqa train --method "
                           f"grepq-ridge')")
    sources, hashes = dict(raw.get("sources") or {}), dict(raw.get("hashes") or {})
    low_path = low_level_weights or sources.get("low_level_weights")
    if low_path is None or not Path(low_path).is_file():
        raise WeightsError(f"{path}: its low-level encoder {low_path or '(none recorded)'} is not there: pass "
                           f"--low-level-weights PATH (the file the model was fitted with)")
    low = load_low_level_encoder(low_path)
    high = None
    if raw.get("mode") == MODE_BOTH:
        clip = clip_weights or sources.get("clip_weights")
        visual = clip_visual_weights or (sources.get("clip_visual_weights") if clip_weights is None else None)
        if clip is None or not Path(clip).is_file():
            raise WeightsError(f"{path}: fitted on CLIP features, but its CLIP file {clip or '(none recorded)'} is not "
                               f"there: pass --clip-weights PATH (and --clip-visual-weights if it was fitted with one)")
        high = load_high_level_encoder(clip, visual)
    elif clip_weights is not None or clip_visual_weights is not None:
        raise InvalidInputError(f"{path} was fitted on the low-level features alone: drop --clip-weights / "
                                "--clip-visual-weights")
    found = encoder_hashes(low, high)
    for part, option in (("low_level", "--low-level-weights"), ("high_level", "--clip-weights")):
        if hashes.get(part) != found[part]:
            raise WeightsError(f"{path}: the {part.replace('_', '-')} encoder's weights differ from the ones the model "
                               f"was fitted with; pass the same {option} file(s) as the fit")
    info = {k: raw.get(k) for k in ("database", "root", "score_name", "alpha", "mode")}
    return GRepQRidge(GRepQFeatureExtractor(low, high), raw["coef"].numpy(), float(raw["intercept"]),
                      bool(raw.get("higher_better", True)), info)
