"""What the GRepQ training modes share: the run name and seed checks, the learning-rate shapes, and
the ``stages`` hook through which a library function reports the preparation it does before
training (caching images, FSIM matrices, features) without printing anything itself.

``stages(description, total, unit)`` is a context manager yielding ``advance(n=1)``; the CLI passes
``cli.common.progress_bar``, the library's default does nothing.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, ClassVar, ContextManager, Iterator

import numpy as np

from ..errors import InvalidInputError
from .config import check_run_name, resolve_seed  # noqa: F401 - shared with every recipe

Advance = Callable[..., None]
Stages = Callable[[str, int, str], ContextManager[Advance]]


@contextlib.contextmanager
def no_stages(description: str, total: int, unit: str) -> Iterator[Advance]:
    """The default ``stages``: report nothing."""
    yield lambda n=1, postfix=None: None


class RunConfig:
    """What the GRepQ configs (frozen dataclasses with ``name`` and ``checkpoints_dir``) share:
    path-like fields stored as strings, the run folder, and ``to_dict`` with the method."""

    method: ClassVar[str] = ""
    path_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for key in self.path_fields:
            value = getattr(self, key)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, key, str(value))

    @property
    def run_dir(self) -> Path:
        return Path(self.checkpoints_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "method": self.method, "mode": self.method}


def check_positive_int(value, option: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidInputError(f"{option} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_positive_float(value, option: str, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise InvalidInputError(f"{option} must be a {'non-negative' if allow_zero else 'positive'} number, "
                                f"got {value}")
    return float(value)


def cosine_lr(epoch: int, step: int, steps: int, total_epochs: int, lr: float, min_lr: float) -> float:
    """Cosine from ``lr`` (first step) to ``min_lr`` (after the last), stepped every iteration."""
    t = ((epoch - 1) * steps + step) / max(total_epochs * steps, 1)
    return float(min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * t)))


def warmup_lr(epoch: int, step: int, steps: int, lr: float, warmup_epochs: float) -> float:
    """Linear warm-up over ``warmup_epochs`` (fractions allowed, stepped every iteration), then ``lr``."""
    ramp = warmup_epochs * steps
    done = (epoch - 1) * steps + step + 1  # the first step already learns
    return float(lr) if ramp <= 0 or done >= ramp else float(lr) * done / ramp

