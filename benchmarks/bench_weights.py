"""Random stand-ins for torchvision's ImageNet files, for benchmarks on machines that have none
(speed does not depend on the weights' values, and nothing is downloaded).

Run as a script, it fills a TORCH_HOME: ``python benchmarks/bench_weights.py TORCH_HOME [NAME ...]``
(names: alexnet vgg16 squeezenet1_1 resnet50; default: all four).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NAMES = ("alexnet", "vgg16", "squeezenet1_1", "resnet50")


def write_random_torchvision_files(names=NAMES, seed: int = 0) -> list[Path]:
    """Whole random torchvision models under their official file names in $TORCH_HOME/hub/checkpoints,
    in the layout of torchvision's own files (classifier included, which the lpips package loads
    strictly; no BatchNorm counters). A file already there (real ImageNet weights) is kept."""
    import torch
    import torchvision

    from iqa_cli.models.backbones import BACKBONES
    from iqa_cli.models.graphiqa import RESNET50
    from iqa_cli.weights import torchvision_cache_file

    specs = {spec.torchvision_builder: spec for spec in (*BACKBONES.values(), RESNET50)}
    written = []
    for name in names:
        target = torchvision_cache_file(specs[name])
        if target.is_file():
            continue
        torch.manual_seed(seed)
        state = {k: v for k, v in getattr(torchvision.models, name)(weights=None).state_dict().items()
                 if not k.endswith("num_batches_tracked")}
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, target)
        written.append(target)
    return written


def write_random_low_level(path: Path, seed: int = 5) -> Path:
    """A random GRepQ low-level encoder, saved as the authors' files are ({"state_dict": ...})."""
    import torch

    from iqa_cli.models.grepq import LowLevelEncoder

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": LowLevelEncoder().state_dict()}, path)
    return path


def write_random_clip(path: Path, seed: int = 11) -> Path:
    """A random open_clip RN50 (QuickGELU, as iqa's loader builds it; the text tower too, since the
    prompts are embedded at load), as open_clip saves it. ImportError without open_clip."""
    import logging

    import open_clip
    import torch

    torch.manual_seed(seed)
    logging.disable(logging.WARNING)  # open_clip warns that no pretrained weights were loaded: none are wanted
    try:
        model = open_clip.create_model("RN50", pretrained=None, force_quick_gelu=True).eval()
    finally:
        logging.disable(logging.NOTSET)
    with torch.no_grad():
        for m in model.visual.modules():  # zero-initialised bn3 scales would make every block an identity
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


if __name__ == "__main__":
    os.environ["TORCH_HOME"] = sys.argv[1]
    for path in write_random_torchvision_files(sys.argv[2:] or NAMES):
        print(f"random weights: {path}")
