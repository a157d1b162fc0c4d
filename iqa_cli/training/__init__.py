"""Training: one shared loop (loop.py) and one recipe per family.

``train(TrainConfig(...))`` runs an LPIPS-family recipe and returns a frozen ``TrainResult``:

* ``method="mos"`` (a patch store, training/mos.py): Graphics-LPIPS heads from mean opinion scores.
* ``method="bapps"`` (``bapps_root``, training/bapps.py): LPIPS heads from BAPPS 2AFC judgments.

``train(GraphIQATrainConfig(...))`` runs GraphIQA's pretraining (``method="graphiqa-pretrain"``) or
fine-tuning (``method="graphiqa"``) on a database folder (training/graphiqa.py).

Other families write a ``loop.Recipe`` and call ``loop.run`` (see loop.py's docstring); to make
one available to ``iqa train --method``, add it to RECIPES. Everything runs unchanged under
torchrun (DDP; batch sizes are global, see loop.py).
"""

from __future__ import annotations

from typing import Callable

from .bapps import BAPPSRecipe, evaluate_bapps, two_afc_agreement
from .config import BAPPS_TRAIN_SETS, METHODS, TrainConfig, resume_keys, validate_config
from .graphiqa import GraphIQATrainConfig, train_graphiqa
from .graphiqa import METHODS as GRAPHIQA_METHODS
from .loop import LoopSettings, Recipe, Shard, TrainEvent, TrainResult, run
from .mos import MOSBatches, MOSRecipe, Split, epoch_batches, evaluate_mos, make_split, stimulus_patch_sample
from .perceptual import build_model, init_heads_, learning_rate

Progress = Callable[[TrainEvent], None]

# method name -> recipe class, constructed with the validated TrainConfig
RECIPES: dict[str, Callable[[TrainConfig], Recipe]] = {"mos": MOSRecipe, "bapps": BAPPSRecipe}

__all__ = ["train", "TrainConfig", "GraphIQATrainConfig", "GRAPHIQA_METHODS", "train_graphiqa", "TrainResult",
           "TrainEvent", "RECIPES", "METHODS", "BAPPS_TRAIN_SETS",
           "validate_config", "learning_rate", "build_model", "init_heads_", "make_split", "Split", "epoch_batches",
           "stimulus_patch_sample", "MOSBatches", "evaluate_mos", "evaluate_bapps", "two_afc_agreement",
           "MOSRecipe", "BAPPSRecipe", "Recipe", "Shard", "LoopSettings", "run"]


def train(config: TrainConfig | GraphIQATrainConfig, progress: Progress | None = None) -> TrainResult:
    """Run the configured training; see the module docstring. Under torchrun, call it on every process."""
    if isinstance(config, GraphIQATrainConfig):
        return train_graphiqa(config, progress)
    cfg = validate_config(config)
    recipe = RECIPES[cfg.mode](cfg)
    settings = LoopSettings(
        run_dir=cfg.run_dir, total_epochs=cfg.total_epochs, config=cfg.to_dict(), resume=cfg.resume,
        seed_from_checkpoint=config.seed is None, resume_keys=resume_keys(cfg), eval_every=cfg.testset_freq,
        device=cfg.device, num_workers=cfg.num_workers, stop_after_epoch=cfg.stop_after_epoch,
        inputs=tuple(p for p in (cfg.store, cfg.bapps_root) if p is not None))
    return run(recipe, settings, progress)
