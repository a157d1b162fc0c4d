"""Runs under ``torchrun`` for tests/test_grepq_train.py: grepq-low jobs in one launch.

    torchrun --standalone --nproc_per_node 2 tests/grepq_ddp_driver.py OUT_DIR JOBS.json

JOBS.json: [{"name": ..., "sgd": {GRepQLowConfig kwargs}} | {"name": ..., "cli": [args...]}, ...]. An
"sgd" job runs the grepq-low recipe with plain SGD in place of AdamW (``run_sgd``; the test runs the
same in one process): Adam's first step is lr * g / (|g| + eps), a full step of either sign for a
gradient element at rounding level (~1e-9, a handful of ResNet-18's 11 M), so with Adam two runs
that differ by rounding differ there by up to lr, whatever the data path. SGD keeps rounding at
rounding level, which is what the one-process comparison needs. "cli" jobs go to ddp_driver.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ddp_driver import main as run_jobs
from iqa_cli.training.grepq_low import RESUME_KEYS, GRepQLowConfig, LowLevelRecipe, validate_low_config
from iqa_cli.training.loop import LoopSettings, run


class SGDRecipe(LowLevelRecipe):
    def optimizer(self, modules):
        return torch.optim.SGD(modules["model"].parameters(), lr=self.cfg.lr)


def run_sgd(**kwargs):
    cfg = validate_low_config(GRepQLowConfig(**kwargs))
    settings = LoopSettings(run_dir=cfg.run_dir, total_epochs=cfg.epochs, config=cfg.to_dict(), device="cpu",
                            num_workers=0, resume_keys=RESUME_KEYS)
    return run(SGDRecipe(cfg), settings)


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, jobs = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    for job in jobs:
        if "sgd" in job:
            run_sgd(**job["sgd"])
    run_jobs(out, [job for job in jobs if "sgd" not in job])
