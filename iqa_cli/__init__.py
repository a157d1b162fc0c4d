"""iqa: perceptual image quality (LPIPS, Graphics-LPIPS, BAPPS protocols, mesh-quality databases).

Public names are imported lazily so that ``iqa --help`` never pays for importing torch.
"""

from __future__ import annotations

import importlib

from .errors import InvalidInputError, IQAError, IQAWarning, StoreError, UnknownMetricError, WeightsError, WriteError

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "create_metric": "registry",
    "list_metrics": "registry",
    "PerceptualDistance": "models.lpips",
    "load_image": "io.images",
    "PatchSpec": "io.patches",
    "PatchStore": "io.store",
    "patchify": "datasets.mesh_db",
    "score_mesh_db": "score_db",
    "eval_bapps": "bapps_eval",
    "train": "training",
    "TrainConfig": "training",
}

__all__ = ["__version__", "IQAError", "InvalidInputError", "UnknownMetricError", "WeightsError", "StoreError",
           "WriteError", "IQAWarning", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'iqa_cli' has no attribute {name!r}")
