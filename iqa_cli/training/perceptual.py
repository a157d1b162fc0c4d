"""What the two LPIPS-family recipes share: the model (a PerceptualDistance with fresh heads), the
optimiser and schedule both papers use, the non-negativity clamp, and the checkpoint format that
score-pair, score-mesh-db and eval-bapps load.

Adam(lr, betas=(beta1, 0.999)); the learning rate is ``lr`` for epochs 1..nepoch, then decays
linearly over ``nepoch_decay`` epochs (see ``learning_rate``); every head weight is clamped to >= 0
after every step; the backbone is frozen unless ``train_trunk``. The heads' dropout draws its
masks per batch item (training/keyed.py), so a step is the same on any number of processes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import WeightsError
from .config import TrainConfig
from .loop import Recipe, RunContext


def learning_rate(epoch: int, lr: float, nepoch: int, nepoch_decay: int) -> float:
    """The learning rate of 1-based ``epoch``.

    Epochs 1..nepoch use ``lr``; epoch nepoch + k (k = 1..nepoch_decay) uses
    lr * (nepoch_decay + 1 - k) / (nepoch_decay + 1): a straight line from ``lr`` (at epoch
    nepoch) to 0 (at epoch nepoch + nepoch_decay + 1), so every decay epoch still learns and the
    steps are equal. With 5 + 5: 1, 1, 1, 1, 1, 5/6, 4/6, 3/6, 2/6, 1/6 times lr.
    """
    if epoch < 1:
        raise ValueError(f"epochs count from 1, got {epoch}")
    if epoch <= nepoch:
        return float(lr)
    k = epoch - nepoch
    if k > nepoch_decay:
        return 0.0
    return float(lr) * (nepoch_decay + 1 - k) / (nepoch_decay + 1)


def seeded_rng(seed: int, *purpose: int) -> np.random.Generator:
    """A numpy generator for one purpose of one run (split, an epoch's sampling, ...): no saved state needed."""
    return np.random.default_rng([int(seed), *purpose])


SPLIT_PURPOSE, SAMPLE_PURPOSE, SHUFFLE_PURPOSE = 1, 2, 3


@torch.no_grad()
def init_heads_(heads: nn.Module) -> None:
    """Fresh heads: every 1x1 weight drawn from U(0, 1/sqrt(fan_in)).

    That is PyTorch's default conv init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), folded onto >= 0:
    the usual fan-in scale, but already inside the set the clamp projects onto, so the untrained
    distance is a positive combination of the squared feature differences (monotone, zero for
    identical images) and no weight starts clamped dead at 0. Uses torch's global generator.
    """
    for module in heads.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
            bound = 1.0 / math.sqrt(module.in_channels)
            module.weight.uniform_(0.0, bound)


def build_model(cfg: TrainConfig):
    """A PerceptualDistance with fresh heads on the configured backbone (CPU, train mode)."""
    from ..models.backbones import BACKBONES, Backbone
    from ..models.lpips import PerceptualDistance
    from ..weights import load_backbone_weights

    spec = BACKBONES[cfg.net]
    model = PerceptualDistance(spec, version=cfg.version, head_type=cfg.head, spatial=False, backbone=Backbone(spec))
    source = "random" if cfg.from_scratch else (cfg.backbone_weights or "imagenet")
    load_backbone_weights(model.net, spec, source)
    init_heads_(model.heads_module())
    model.freeze_backbone(not cfg.train_trunk)
    return model


def saves_backbone(cfg: TrainConfig) -> bool:
    """Checkpoints carry the backbone whenever it is not torchvision's ImageNet one (trained,
    random or from a local file), so they load anywhere with just --checkpoint."""
    return bool(cfg.train_trunk or cfg.from_scratch or cfg.backbone_weights)


class PerceptualRecipe(Recipe):
    """Base of the MOS and BAPPS recipes: ``modules["model"]`` is the PerceptualDistance; other
    modules (BAPPS's ranking network) are trained too, saved in ``latest.pth`` only, never clamped."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.seed = int(cfg.seed) if cfg.seed is not None else 0
        self.device = torch.device("cpu")
        self.num_workers: int | None = cfg.num_workers

    def prepare(self, ctx: RunContext) -> None:
        self.seed, self.device, self.num_workers = ctx.seed, ctx.device, ctx.num_workers
        self.config = dict(ctx.config)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {}

    def build(self) -> dict[str, nn.Module]:
        from .keyed import keyed_dropout_

        return {"model": keyed_dropout_(build_model(self.cfg)), **self.extra_modules()}

    def optimizer(self, modules: dict[str, nn.Module]) -> torch.optim.Optimizer:
        model = modules["model"]
        params = list(model.heads_module().parameters())
        if self.cfg.train_trunk:
            params += list(model.net.parameters())
        for name, module in modules.items():
            if name != "model":
                params += list(module.parameters())
        return torch.optim.Adam(params, lr=self.cfg.lr, betas=(self.cfg.beta1, 0.999))

    def learning_rate(self, epoch: int, step: int, steps: int) -> float:
        return learning_rate(epoch, self.cfg.lr, self.cfg.nepoch, self.cfg.nepoch_decay)

    def after_step(self, modules: dict[str, nn.Module]) -> None:
        from ..models.heads import clamp_nonnegative

        clamp_nonnegative(modules["model"].heads_module())

    def checkpoint(self, modules: dict[str, nn.Module]) -> dict[str, Any]:
        from ..weights import checkpoint_payload

        cfg = self.cfg
        return checkpoint_payload(modules["model"], net=cfg.net, version=cfg.version, head_type=cfg.head,
                                  config=self.config, include_backbone=saves_backbone(cfg))

    def resume_state(self, modules: dict[str, nn.Module]) -> dict[str, Any]:
        return {"extra_modules": {name: {k: t.detach().cpu() for k, t in m.state_dict().items()}
                                  for name, m in modules.items() if name != "model"}}

    def restore(self, modules: dict[str, nn.Module], checkpoint: dict[str, Any]) -> None:
        from ..weights import CHECKPOINT_FORMAT, load_strict

        path = self.cfg.run_dir / "latest.pth"
        state = checkpoint.get("state_dict")
        if checkpoint.get("format") != CHECKPOINT_FORMAT or not isinstance(state, dict):
            raise WeightsError(f"--resume: {path} is not a training checkpoint written by 'iqa train' (no "
                               f"state_dict); start a new run with another --name")
        model = modules["model"]
        load_strict(model.heads_module(), {k: v for k, v in state.items() if k.startswith("lin")},
                    source=f"{path} heads")
        backbone = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
        if backbone:
            load_strict(model.net, backbone, source=f"{path} backbone")
        saved = checkpoint["training"].get("extra_modules", {})
        for name, module in modules.items():
            if name != "model":
                load_strict(module, saved.get(name, {}) if isinstance(saved, dict) else {}, source=f"{path} {name}")

