"""Runs under ``torchrun`` for tests/test_distributed.py: several iqa commands in one launch (a
launch costs ~10 s of start-up here), and a toy recipe that exercises what the MOS and BAPPS
recipes do not: BatchNorm (synchronised across processes), a trained module used only in the loss,
keyed dropout on a plain network, and a non-decomposable loss.

    torchrun --standalone --nproc_per_node 2 tests/ddp_driver.py OUT_DIR JOBS.json

JOBS.json: [{"name": ..., "cli": [args...]} | {"name": ..., "toy": {kwargs}}, ...]. Each CLI job's
stdout and stderr are kept per process as OUT_DIR/NAME.rankR.{stdout,stderr}; its exit code as
OUT_DIR/NAME.rankR.exit.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from iqa_cli.training.keyed import item_randomness, keyed_dropout_
from iqa_cli.training.loop import LoopSettings, Recipe, RunContext, Shard, run


class ToyRecipe(Recipe):
    """Ranks random vectors by a hidden linear score: an MLP with BatchNorm and dropout predicts the
    score, a learnt affine map (used only in the loss) calibrates it; loss = MSE + soft-rank loss
    over the whole batch. Batches of 7, 8 and 3 vectors: uneven shards on 2 processes."""

    unit, columns, eval_key = "vectors", ("test_mse",), "test_mse"
    SIZES = (7, 8, 3)

    def __init__(self, dim: int = 6):
        self.dim = dim
        self.w = torch.linspace(-1.0, 1.0, dim)

    def prepare(self, ctx: RunContext) -> None:
        self.seed = ctx.seed

    def build(self) -> dict[str, nn.Module]:
        # no bias before BatchNorm: its gradient is zero up to rounding, which Adam would blow up to full steps
        net = nn.Sequential(nn.Linear(self.dim, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                            nn.Linear(16, 1))
        return {"net": keyed_dropout_(net), "calib": nn.Linear(1, 1)}

    def optimizer(self, modules):
        return torch.optim.Adam([*modules["net"].parameters(), *modules["calib"].parameters()], lr=1e-2)

    def learning_rate(self, epoch: int, step: int, steps: int) -> float:
        t = ((epoch - 1) * steps + step) / (2 * steps)  # cosine, stepped per iteration
        return 1e-2 * 0.5 * (1 + math.cos(math.pi * t))

    def batches(self, epoch: int):
        start = np.cumsum((0, *self.SIZES))
        return [list(range(a, b)) for a, b in zip(start[:-1], start[1:])]

    def vectors(self, seeds) -> torch.Tensor:
        return torch.stack([torch.randn(self.dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]) \
            if len(seeds) else torch.zeros(0, self.dim)

    def load(self, shard: Shard):
        return {"x": self.vectors(shard.seeds)}

    def forward(self, modules, data, shard: Shard):
        x = data["x"]
        with item_randomness(shard.seeds, [1] * len(x), x.device):
            pred = modules["net"](x).squeeze(1)
        return {"pred": pred, "target": x @ self.w}

    def loss(self, modules, outputs):
        from iqa_cli.losses import rank_loss

        pred = modules["calib"](outputs["pred"][:, None]).squeeze(1)
        return torch.mean((pred - outputs["target"]) ** 2) + rank_loss(outputs["pred"], outputs["target"])

    def evaluate(self, modules):
        x = self.vectors(range(1000, 1040))
        pred = modules["calib"](modules["net"](x)).squeeze(1)
        return {"test_mse": float(torch.mean((pred - x @ self.w) ** 2))}

    def checkpoint(self, modules):
        return {name: {k: v.detach().cpu() for k, v in m.state_dict().items()} for name, m in modules.items()}

    def restore(self, modules, checkpoint):
        for name, module in modules.items():
            module.load_state_dict(checkpoint[name])


def run_toy(run_dir: Path, epochs: int = 2, seed: int = 3, resume: bool = False):
    settings = LoopSettings(run_dir=Path(run_dir), total_epochs=epochs, config={"seed": seed}, resume=resume,
                            device="cpu", num_workers=0, resume_keys=("seed",))
    return run(ToyRecipe(), settings)


def main(out: Path, jobs: list[dict]) -> None:
    from iqa_cli.cli.app import app

    rank = os.environ.get("RANK", "0")
    for job in jobs:
        if "toy" in job:
            run_toy(**job["toy"])
            continue
        prefix = out / f"{job['name']}.rank{rank}"
        with open(f"{prefix}.stdout", "w") as stdout, open(f"{prefix}.stderr", "w") as stderr, \
                contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:  # not standalone: click returns the exit code instead of calling sys.exit
                result = app([str(a) for a in job["cli"]], prog_name="iqa", standalone_mode=False)
                code = result if isinstance(result, int) else 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        Path(f"{prefix}.exit").write_text(str(code))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()))
