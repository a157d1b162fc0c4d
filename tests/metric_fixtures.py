"""Every registered metric, built with small random weights written to files the way its users pass
them (checkpoints, encoder state dicts, a pristine store): ``build(spec, folder)``. Used by the
registry tests, the precision and CUDA parity tests, and the benchmarks."""

from __future__ import annotations

import numpy as np
import torch

from conftest import save_png
from iqa_cli import create_metric


def graphics_checkpoint(tmp_path):
    """An original-layout Graphics-LPIPS state dict (heads + backbone), with random weights."""
    from iqa_cli.models.backbones import BACKBONES
    from iqa_cli.models.heads import clamp_nonnegative
    from iqa_cli.models.lpips import PerceptualDistance

    torch.manual_seed(3)
    model = PerceptualDistance(BACKBONES["alex"], head_type="graphics")
    clamp_nonnegative(model.heads_module())  # as every trained checkpoint is
    path = tmp_path / "graphics.pth"
    torch.save({k: v for k, v in model.state_dict().items()}, path)
    return path


def graphiqa_checkpoint(tmp_path):
    """A small GraphIQA (K 8) with a random backbone, saved in iqa's format with that backbone."""
    from iqa_cli.models.graphiqa import GraphIQAConfig
    from iqa_cli.weights import load_graphiqa, save_graphiqa_checkpoint

    torch.manual_seed(4)
    model = load_graphiqa(None, backbone_weights="random", config=GraphIQAConfig(embed_size=8))
    model.backbone_source = "checkpoint"  # not ImageNet's: the file keeps it
    return save_graphiqa_checkpoint(tmp_path / "graphiqa.pth", model)


def grepq_files(tmp_path):
    """A random low-level encoder saved as a state dict, and a pristine store of two photographs."""
    from skimage import data

    from iqa_cli.models.grepq import LowLevelEncoder
    from iqa_cli.pristine import build_pristine_store

    torch.manual_seed(5)
    weights = tmp_path / "grepq_low.pth"
    torch.save(LowLevelEncoder().state_dict(), weights)
    for name in ("astronaut", "coffee"):
        save_png(tmp_path / "pristine" / f"{name}.png", getattr(data, name)()[:288, :384])
    build_pristine_store(tmp_path / "pristine", tmp_path / "pristine.h5", sharpness=0.0, colourfulness=0.0)
    return {"low_level_weights": weights, "pristine": tmp_path / "pristine.h5"}


def grepq_ridge_checkpoint(tmp_path):
    """A ridge model on a random low-level encoder's 128-d features, in the file format of
    'iqa train --method grepq-ridge' (the encoder's file and hash recorded in it)."""
    from types import SimpleNamespace

    from iqa_cli.models.grepq import LowLevelEncoder
    from iqa_cli.models.grepq_ridge import GRepQFeatureExtractor, encoder_hashes, ridge_payload

    torch.manual_seed(7)
    low = LowLevelEncoder()
    weights = tmp_path / "grepq_low.pth"
    torch.save(low.state_dict(), weights)
    extractor = GRepQFeatureExtractor(low)
    table = SimpleNamespace(database="tid2013", root=tmp_path, score_name="MOS", higher_better=True)
    payload = ridge_payload(np.linspace(-1, 1, extractor.dim), 4.5, 1.0, extractor,
                            {"low_level_weights": str(weights)}, encoder_hashes(low, None), table)
    torch.save(payload, tmp_path / "ridge.pth")
    return {"checkpoint": tmp_path / "ridge.pth"}


def asna_checkpoint(tmp_path):
    """A small random ASNA network saved in iqa's family-checkpoint format."""
    from iqa_cli.models.asna import AsnaNet, asna_config
    from iqa_cli.weights import save_family_checkpoint

    torch.manual_seed(6)
    config = asna_config("simple")
    path = tmp_path / "asna.pth"
    save_family_checkpoint(path, "asna", AsnaNet(config), config.to_dict())
    return path


# metrics that need a weights file the tests make, and the options that keep them small
NEEDS = {"graphics-lpips": lambda tmp: {"checkpoint": graphics_checkpoint(tmp)},
         "graphiqa": lambda tmp: {"checkpoint": graphiqa_checkpoint(tmp), "crops": 2},
         "grepq": grepq_files,
         "grepq-ridge": grepq_ridge_checkpoint,
         "asna": lambda tmp: {"checkpoint": asna_checkpoint(tmp), "small": "resize"}}


def build(spec, folder):
    """The metric of ``spec``, its weight files (if it needs any) written under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return create_metric(spec.name, **NEEDS.get(spec.name, lambda tmp: {})(folder))
