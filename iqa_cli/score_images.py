"""No-reference scoring of image files: plan which files, then stream them once through every metric.

The plan (which files, their sizes) is built and checked before any model loads, so a typo costs
milliseconds. Images of one size form a batch; every metric scores each batch (NIQE cuts its
blocks and GRepQ its patches on the device). Under torchrun the batches are shared among the
processes and the scores gathered in the plan's order (engine.shard_work).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import InvalidInputError
from .io.images import image_size, is_image_path


@dataclass(frozen=True)
class ImagePlan:
    files: list[Path]
    sizes: list[tuple[int, int]]  # (H, W) of each file, from its header
    folder_mode: bool  # a folder (or several inputs) was given: report a list


def plan_images(inputs: Sequence[str | Path]) -> ImagePlan:
    """Every image file named or found (recursively, sorted) under the given folders."""
    if not inputs:
        raise InvalidInputError("give at least one image file or folder")
    files: list[Path] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise InvalidInputError(f"{item}: no such file or folder (check the path)")
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and is_image_path(p))
            if not found:
                raise InvalidInputError(f"{item}: folder holds no images (expected .png/.jpg/.bmp/... files)")
            files.extend(found)
        else:
            files.append(item)
    unique = list(dict.fromkeys(files))
    sizes = [image_size(f) for f in unique]  # unreadable files fail here, named, before any model loads
    return ImagePlan(unique, sizes, folder_mode=len(inputs) > 1 or Path(inputs[0]).is_dir())


@dataclass(frozen=True)
class ImageScore:
    image: Path
    scores: dict[str, float]

    @property
    def score(self) -> float:
        return next(iter(self.scores.values()))


class _Images:
    """Loads a batch of same-size files as uint8 (n, H, W, 3); a bad file comes back as a message."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from .io.images import load_image_uint8

        try:
            return i, load_image_uint8(self.files[i]), None
        except InvalidInputError as exc:
            return i, None, str(exc)


def _collate(items):
    import torch

    errors = [e for _, _, e in items if e]
    if errors:
        return [], None, errors[0]
    return [i for i, _, _ in items], torch.from_numpy(np.stack([a for _, a, _ in items])), None


def score_images(plan: ImagePlan, metrics, batch_size: int = 16, device="auto", num_workers: int | None = None,
                 advance: Callable[[int], None] | None = None, precision: str = "fp32") -> list[ImageScore]:
    """Every metric's score of every planned image, in the plan's order (``precision``: see
    engine.autocast)."""
    import torch

    from .engine import autocast, check_precision, make_loader, resolve_device, shard_work, to_device_float

    check_precision(precision)
    metrics = list(metrics)
    for metric in metrics:
        if metric.kind != "nr":
            raise InvalidInputError(f"--metric {metric.name} is full-reference: score-image takes no-reference "
                                    f"metrics ('iqa list-metrics --kind nr'); use score-pair for pairs")
    for hw in dict.fromkeys(plan.sizes):
        first = plan.files[plan.sizes.index(hw)]
        for metric in metrics:
            metric.check_size(hw, name=str(first))
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, hw in enumerate(plan.sizes):
        by_size.setdefault(hw, []).append(i)
    batches = sorted((idx[k:k + batch_size] for idx in by_size.values() for k in range(0, len(idx), batch_size)),
                     key=lambda b: b[0])
    dev = resolve_device(device)
    work = shard_work(len(batches), weights=[len(b) for b in batches])
    advance = work.progress(advance)
    loader = make_loader(_Images(plan.files), None, dev, batch_sampler=[batches[i] for i in work.mine],
                         num_workers=num_workers if num_workers is not None else (None if len(plan.files) > batch_size
                                                                                   else 0),
                         collate_fn=_collate)
    metrics = [m.to(dev).eval() for m in metrics]
    mine = []
    with torch.inference_mode():
        for idx, images, error in loader:
            if error:
                raise InvalidInputError(error)
            x = to_device_float(images, dev)
            scored = {}
            for m in metrics:
                with autocast(dev, precision, m):
                    scored[m.name] = m.score(x).double().cpu().numpy()
            mine.append(scored)
            if advance is not None:
                advance(len(idx))
    results: list[ImageScore | None] = [None] * len(plan.files)
    for batch, scores in zip(batches, work.gather(mine)):
        for j, i in enumerate(batch):
            results[i] = ImageScore(plan.files[i], {name: float(v[j]) for name, v in scores.items()})
    return results  # type: ignore[return-value]
