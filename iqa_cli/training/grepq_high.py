"""GRepQ's high-level encoder: CLIP RN50's image tower fine-tuned on pristine images with the group
contrastive loss (``iqa train --method grepq-high``); ../shared/reference/grepq.md has the recipe.

Each image is resized (shorter side to ``crop``, bicubic) and centre-cropped to ``crop`` x ``crop``
-- CLIP's own preprocessing, 224 by default -- and CLIP-normalised inside the encoder. A step takes
``batch_size`` images (128) and gives each a pseudo-label q = sigmoid((cos(v, t_good) - cos(v,
t_bad)) / 0.1) from the image tower's current output v and the frozen text embeddings of "a Good
photo." / "a Bad photo." (computed once from the CLIP file, models/grepq.py). The loss groups the
G lowest and G highest q of the *whole* batch, so it is computed on the loop's gathered outputs:
under torchrun the images of a step are shared among the processes and the loss is still the
one-process loss of the global batch.

The original's bugs are fixed, not copied: the projection head ReLU(Linear(1024, 128)) is given to
the optimiser with the image tower, and the defaults are what the authors state for the released
weights, lr 1e-5 and G = 8 (their config says 1e-6 and 4). Adam, linear warm-up over 2.5 epochs,
then constant. The image tower runs as in scoring, attention pooling without its positional
embedding (that embedding is frozen: it is never used). The number of epochs is not published:
10 by default.

The CLIP weights come only from a local file (``clip_weights``): a full CLIP RN50 (its text tower
gives the prompt embeddings), or a file this recipe wrote (to fine-tune further). Checkpoints hold
``state_dict`` = the HighLevelEncoder (``visual.*`` + ``prompt_embeddings``) and ``head``; they load
as the grepq metric's ``--clip-weights`` (prompts included) or ``--clip-visual-weights``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError, WeightsError
from ..losses.grepq import HighLevelRecipeDefaults, group_contrastive_loss
from .grepq_common import (RunConfig, Stages, check_positive_float, check_positive_int, check_run_name, no_stages, resolve_seed,
                           warmup_lr)
from .loop import LoopSettings, Recipe, RunContext, Shard, TrainResult, run
from .perceptual import seeded_rng

METHOD = "grepq-high"
CHECKPOINT_FORMAT = "iqa-grepq-high"
SHUFFLE_PURPOSE = 21
DEFAULT_EPOCHS = 10  # not published
_DEFAULTS = HighLevelRecipeDefaults()


@dataclass(frozen=True)
class GRepQHighConfig(RunConfig):
    """Everything a grepq-high run depends on.

    root            a folder of pristine images (searched recursively)
    clip_weights    local CLIP RN50 file (required): the start of the fine-tuning
    batch_size      images per optimiser step, for the whole job; the last partial batch of an
                    epoch is kept when it still holds 2G images
    group_size      G: the group contrastive loss compares the G lowest and G highest pseudo-labels
    lr, warmup_epochs, epochs   Adam at lr after a linear warm-up (fractions of epochs allowed)
    crop            shorter side resized to it, then a centre crop of crop x crop
    """

    method = METHOD
    path_fields = ("root", "checkpoints_dir", "clip_weights")

    name: str
    root: str
    clip_weights: str | None = None
    checkpoints_dir: str = "checkpoints"
    batch_size: int = _DEFAULTS.batch_size
    group_size: int = _DEFAULTS.group_size
    temperature: float = _DEFAULTS.temperature
    lr: float = _DEFAULTS.lr
    warmup_epochs: float = _DEFAULTS.warmup_epochs
    epochs: int = DEFAULT_EPOCHS
    crop: int = _DEFAULTS.crop
    seed: int | None = None
    device: str = "auto"
    num_workers: int | None = None
    resume: bool = False
    stop_after_epoch: int | None = None



RESUME_KEYS = ("mode", "batch_size", "group_size", "temperature", "lr", "warmup_epochs", "crop", "seed")


def validate_high_config(cfg: GRepQHighConfig) -> GRepQHighConfig:
    check_run_name(cfg.name)
    if cfg.clip_weights is None:
        raise WeightsError("grepq-high fine-tunes CLIP RN50: pass --clip-weights PATH, a local CLIP RN50 file "
                           "(open_clip's RN50 state dict or OpenAI's RN50.pt); nothing is downloaded")
    check_positive_int(cfg.batch_size, "--batch-size", 4)
    check_positive_int(cfg.group_size, "--group-size", 2)
    if 2 * cfg.group_size > cfg.batch_size:
        raise InvalidInputError(f"--group-size {cfg.group_size} needs batches of at least {2 * cfg.group_size} images "
                                f"(two groups), got --batch-size {cfg.batch_size}")
    check_positive_int(cfg.epochs, "--nepoch", 1)
    check_positive_int(cfg.crop, "--crop", 32)
    check_positive_float(cfg.lr, "--lr")
    check_positive_float(cfg.warmup_epochs, "warmup_epochs", allow_zero=True)
    check_positive_float(cfg.temperature, "temperature")
    if cfg.num_workers is not None:
        check_positive_int(cfg.num_workers, "--workers", 0)
    if cfg.stop_after_epoch is not None:
        check_positive_int(cfg.stop_after_epoch, "stop_after_epoch", 0)
    return replace(cfg, seed=resolve_seed(cfg.seed))


def centre_crop(path: str | Path, size: int) -> np.ndarray:
    """uint8 (size, size, 3): shorter side resized to ``size`` (bicubic), then the centre square
    (torchvision's CenterCrop rounding)."""
    from ..datasets.cache import load_database_image

    rgb = load_database_image(path, size)
    h, w = rgb.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return rgb[top:top + size, left:left + size]


class HighLevelRecipe(Recipe):
    """Items are image positions in the sorted folder listing; outputs per image: the projection
    head's embedding (128) and the pseudo-label."""

    unit = "images"

    def __init__(self, cfg: GRepQHighConfig, stages: Stages = no_stages):
        self.cfg = cfg
        self.stages = stages
        self.seed = int(cfg.seed or 0)
        self.device = torch.device("cpu")

    def prepare(self, ctx: RunContext) -> None:
        from ..models.grepq import load_high_level_encoder
        from ..pristine import list_images

        cfg = self.cfg
        self.seed, self.device, self.config = ctx.seed, ctx.device, dict(ctx.config)
        self.images = [str(p) for p in list_images(cfg.root)]
        if len(self.images) < 2 * cfg.group_size:
            raise InvalidInputError(f"{cfg.root}: {len(self.images)} pristine image(s); the group contrastive loss "
                                    f"compares two groups of --group-size {cfg.group_size}, so it needs at least "
                                    f"{2 * cfg.group_size} (add images or lower --group-size)")
        self.n_train = len(self.images)
        self.encoder = load_high_level_encoder(cfg.clip_weights)
        self.encoder.require_prompts()  # the pseudo-labels need the text tower's prompt embeddings

    def build(self) -> dict[str, nn.Module]:
        from ..models.grepq import ProjectionHead

        encoder = self.encoder
        encoder.visual.attnpool.positional_embedding.requires_grad_(False)  # never used: see the docstring
        return {"model": encoder, "head": ProjectionHead()}

    def optimizer(self, modules) -> torch.optim.Optimizer:
        params = [p for m in (modules["model"], modules["head"]) for p in m.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.cfg.lr)

    def learning_rate(self, epoch: int, step: int, steps: int) -> float:
        return warmup_lr(epoch, step, steps, self.cfg.lr, self.cfg.warmup_epochs)

    def batches(self, epoch: int) -> list[list[int]]:
        order = seeded_rng(self.seed, SHUFFLE_PURPOSE, epoch).permutation(len(self.images)).tolist()
        size = self.cfg.batch_size
        out = [order[k:k + size] for k in range(0, len(order), size)]
        if len(out[-1]) < 2 * self.cfg.group_size:  # too few for two groups: left for another epoch
            out.pop()
        return out

    def load(self, shard: Shard) -> dict[str, torch.Tensor]:
        s = self.cfg.crop
        crops = [centre_crop(self.images[i], s) for i in shard.items]
        x = torch.from_numpy(np.stack(crops)) if crops else torch.zeros((0, s, s, 3), dtype=torch.uint8)
        return {"images": x.permute(0, 3, 1, 2)}

    def forward(self, modules, data: dict[str, torch.Tensor], shard: Shard) -> dict[str, torch.Tensor]:
        encoder = modules["model"]
        v = encoder(data["images"].to(self.device))  # uint8 -> [0, 1] -> CLIP normalisation inside
        return {"embedding": modules["head"](v), "pseudo_label": encoder.pseudo_labels(v)}

    def loss(self, modules, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.cfg
        return group_contrastive_loss(outputs["embedding"], outputs["pseudo_label"], cfg.group_size, cfg.temperature)

    def checkpoint(self, modules) -> dict[str, Any]:
        def cpu(m: nn.Module) -> dict[str, torch.Tensor]:
            return {k: t.detach().cpu() for k, t in m.state_dict().items()}

        return {"format": CHECKPOINT_FORMAT, "method": METHOD, "state_dict": cpu(modules["model"]),
                "head": cpu(modules["head"]), "config": self.config}

    def restore(self, modules, checkpoint: dict[str, Any]) -> None:
        from ..weights import load_strict

        path = self.cfg.run_dir / "latest.pth"
        if checkpoint.get("format") != CHECKPOINT_FORMAT or not isinstance(checkpoint.get("head"), dict):
            raise WeightsError(f"--resume: {path} was not written by 'iqa train --method {METHOD}'; start a new run "
                               "with another --name")
        load_strict(modules["model"], checkpoint["state_dict"], source=str(path))
        load_strict(modules["head"], checkpoint["head"], source=f"{path} head")


def group_loss_of(encoder: nn.Module, head: nn.Module, images: torch.Tensor, group_size: int,
                  temperature: float = _DEFAULTS.temperature) -> float:
    """The group contrastive loss of one batch of uint8 (N, 3, S, S) images, without gradients
    (the modules are used in their current mode)."""
    with torch.no_grad():
        v = encoder(images)
        return float(group_contrastive_loss(head(v), encoder.pseudo_labels(v), group_size, temperature))


def train_grepq_high(config: GRepQHighConfig, progress=None, stages: Stages = no_stages) -> TrainResult:
    """Fine-tune CLIP RN50's image tower; see the module docstring. Under torchrun, call it on every process."""
    cfg = validate_high_config(config)
    inputs: Sequence[str] = (cfg.root, cfg.clip_weights)
    settings = LoopSettings(
        run_dir=cfg.run_dir, total_epochs=cfg.epochs, config=cfg.to_dict(), resume=cfg.resume,
        seed_from_checkpoint=config.seed is None, resume_keys=RESUME_KEYS, device=cfg.device,
        num_workers=cfg.num_workers, stop_after_epoch=cfg.stop_after_epoch, inputs=tuple(inputs),
        what=f"iqa train --method {METHOD}")
    return run(HighLevelRecipe(cfg, stages), settings, progress)
