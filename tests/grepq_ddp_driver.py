"""Runs under ``torchrun`` for tests/test_grepq_train.py: grepq-low jobs in one launch.

    torchrun --standalone --nproc_per_node 2 tests/grepq_ddp_driver.py OUT_DIR JOBS.json

JOBS.json: [{"name": ..., "sgd": {GRepQLowConfig kwargs}} | {"name": ..., "cli": [args...]}, ...]. An
"sgd" job runs the grepq-low recipe with plain SGD in place of AdamW, in float64 (``run_sgd``; the
test runs the same in one process); "cli" jobs go to ddp_driver.py.

Why SGD: Adam's first step is lr * g / (|g| + eps), a full step of either sign for a gradient
element at rounding level (~1e-9, a handful of ResNet-18's 11 M), so with Adam two runs that differ
by rounding differ there by up to lr, whatever the data path.

Why float64: in float32 the one- and two-process runs are not comparable beyond ~1e-3, whatever the
code, because the gradient is not a continuous function of the activations. Measured on this data
(seed 0, step 1): one pre-activation of the trunk's last ReLU (layer4.1, channel 244, two samples)
is +1.46e-6 in float64, while float32 forwards carry ~4e-6 relative error at layer4's output; which
side of 0 it lands on depends on the convolution kernels (oneDNN on AVX-512/AMX for a block of 12
images vs a batch of 24 took different sides; on AVX2 both took the same one, which is why the
float32 test passed there). A flip switches that ReLU's gradient for two samples: step-1 gradients
1.3% apart at layer4.1.bn2.bias, 0.6% at conv1; after 2 SGD steps conv1.weight 5.5e-4 apart on a
6.5e-3 movement, and the BatchNorm statistics re-estimated from those weights 0.12 apart on 2.6.
Without a flip (oneDNN off) float32 still ends 3.6e-5 apart (head gradients already 1e-5 relative
apart: QACL cancels). In float64 the same runs agree to 8e-16 (weights) and 1.5e-13 (BatchNorm
statistics), on AVX-512 and under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 alike (that
ReLU input is ~1e9 float64 rounding units from 0), while a float32 BatchNorm inside the float64
model (what sync_batchnorm did before it kept the module's own tensors) already shows as 1e-7. The inputs (fragment
views, FSIM) stay float32 as the recipe makes them: they are the same values in both runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ddp_driver import main as run_jobs
from iqa_cli.models.grepq import LowLevelEncoder
from iqa_cli.training.grepq_low import RESUME_KEYS, GRepQLowConfig, LowLevelRecipe, validate_low_config
from iqa_cli.training.loop import LoopSettings, run


class Float64Encoder(LowLevelEncoder):
    """The low-level encoder in float64 (same initial weights: built in float32, then converted)."""

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images.to(torch.float64))


class SGDRecipe(LowLevelRecipe):
    def build(self):
        return {"model": Float64Encoder().double()}

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
