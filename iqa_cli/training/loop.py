"""The one training loop: epochs, learning-rate schedule, optimiser steps, checkpoints, resume,
logs and curves, the run-folder lock, progress events, and processes (DDP under torchrun).

A training family is a *recipe* (training/mos.py, training/bapps.py, ...): it says what is trained
and on what; ``run(recipe, settings)`` does everything else. A recipe sees only its *shard* of each
global batch and never asks how many processes there are.

The recipe interface
--------------------
``prepare(ctx)``
    Open and check the data; ``ctx`` has the run's seed, device, DataLoader workers and, when
    resuming, the checkpoint's training state. Called on every process before anything is written
    (raise an IQAError for bad input: the run folder is not created).
``build() -> {name: module}``
    Fresh trainable modules on the CPU (the loop has called ``torch.manual_seed(seed)``). Everything
    that has parameters to learn, BatchNorm included (the loop syncs BatchNorm across processes).
``optimizer(modules)`` and ``learning_rate(epoch, step, steps) -> float``
    The optimiser, and the learning rate of step ``step`` (0-based) of the ``steps`` steps of
    1-based ``epoch``: set before every step, so a per-epoch decay, a warm-up or a cosine schedule
    stepped per iteration are all a function of (epoch, step); resume needs no scheduler state.
``batches(epoch) -> [[item, ...], ...]``
    The epoch's *global* batches: small picklable item descriptions (a stimulus and its patch
    indices, a triplet index, a table row, a random vector's seed ...), from the seed and the epoch
    alone, never from the number of processes. One list = one optimiser step.
``load(shard) -> data``
    Reads this process's items of one batch (runs in DataLoader workers): CPU tensors.
``forward(modules, data, shard) -> {name: tensor}``
    Runs the modules on the shard; every output has one row per item of ``shard.items``. Draw any
    randomness per item from ``shard.seeds`` (training/keyed.py makes dropout do so). A model that
    couples the items of a batch (a graph over the batch, batch statistics) uses ``shard.gather``
    on its intermediate tensor and ``shard.local`` to take its own items' rows back.
``loss(modules, outputs) -> tensor``
    The loss of the *whole* batch: ``outputs`` are every process's rows concatenated in batch
    order (autograd flows back to each process's own rows), so a loss that is not a sum over items
    (soft-rank Spearman, in-batch contrastive, Pearson) is exact. It is computed alike on every
    process; modules used here (a ranking head) are trained like the others.
``after_step(modules)``
    After each optimiser step (e.g. projecting head weights onto >= 0). Default: nothing.
``after_epoch(modules, epoch)``
    After an epoch's last step, before its evaluation and checkpoint, on every process, modules in
    train mode (e.g. re-estimating BatchNorm's running statistics). Default: nothing.
``batch_stats(outputs) -> {key: sum}``
    Optional per-batch sums over items, logged per epoch as ``sum / items`` (e.g. train 2AFC).
``evaluate(modules) -> {key: value}``
    Test/validation metrics, on every process, modules in eval mode. The engine's scorers are
    collective and shard themselves, so calling them here shares the evaluation out.
``checkpoint(modules) -> dict``, ``resume_state(modules) -> dict``, ``restore(modules, checkpoint)``
    What each checkpoint file holds (what a scorer loads), what ``latest.pth`` also needs to resume
    (under its ``training`` key, beside the loop's own state), and the strict inverse of both.
``files() -> {name: text}``
    Optional small text files the main process writes into the run folder when the run starts
    (e.g. the train/validation/test split). Default: none.
Attributes: ``unit`` (what an item is, for progress: "stimuli"), ``columns`` (metrics.csv columns
the recipe adds), ``eval_key`` (the headline metric: the last epoch that has it is the result's
``final``), ``select_key`` (a validation metric, higher = better: the evaluated epoch with its
highest value, the earliest on ties and NaN counting as lowest, is kept as ``best.pth`` and is the
result's ``best``; "" for none), ``curves`` (what curves.png plots), ``n_train`` / ``n_test`` (set
in ``prepare``, for the result). ``run`` returns a TrainResult whose ``model`` is ``modules["model"]``.

A minimal recipe, a linear model fit to random vectors::

    class Toy(Recipe):
        unit, columns, eval_key = "vectors", ("test_mae",), "test_mae"

        def prepare(self, ctx):
            self.seed = ctx.seed
        def build(self):
            return {"net": nn.Linear(8, 1)}
        def optimizer(self, modules):
            return torch.optim.Adam(modules["net"].parameters(), lr=1e-2)
        def learning_rate(self, epoch, step, steps):
            return 1e-2 * 0.5 * (1 + math.cos(math.pi * ((epoch - 1) * steps + step) / (10 * steps)))
        def batches(self, epoch):
            return [list(range(k, k + 32)) for k in range(0, 256, 32)]     # 8 steps of 32 items
        def load(self, shard):           # one random vector per item, from the item's seed
            x = [torch.randn(8, generator=torch.Generator().manual_seed(int(s))) for s in shard.seeds]
            return {"x": torch.stack(x) if x else torch.zeros(0, 8)}    # a shard may be empty
        def forward(self, modules, data, shard):
            return {"pred": modules["net"](data["x"]).squeeze(1), "target": data["x"].sum(1)}
        def loss(self, modules, outputs):
            return (outputs["pred"] - outputs["target"]).abs().mean()
        def evaluate(self, modules):
            return {"test_mae": ...}
        def checkpoint(self, modules):
            return {"state_dict": modules["net"].state_dict()}
        def restore(self, modules, checkpoint):
            modules["net"].load_state_dict(checkpoint["state_dict"])

    run(Toy(), LoopSettings(run_dir=Path("runs/toy"), total_epochs=10, config={"seed": 0}))

tests/ddp_driver.py has a complete one (BatchNorm, keyed dropout, a loss-only module, soft-rank
loss) that the tests run on one and two processes.

Processes and batch sizes
-------------------------
Under torchrun every process runs this same loop. Each global batch is split into contiguous
blocks of items, one per process (a batch with fewer items than processes leaves some empty: their
``forward`` still runs, on zero rows). The outputs are gathered, the loss is the global batch's,
and DistributedDataParallel averages the gradients; with the gather's backward summing every
process's gradient, that average equals the one-process gradient of the global batch. So batch
sizes are *global* (items per optimiser step for the whole job, whatever the number of
processes), and with a seed the weights after any step match a one-process run to rounding
(fp32 on the CPU: within 1e-5, unless an activation sits within rounding of a ReLU's kink: then
a gradient term switches on in one run and not the other; float64 runs agree to ~1e-15).
BatchNorm statistics are those of the global batch (SyncBatchNorm; engine.CPUSyncBatchNorm on
the CPU). Only the main process writes files and reports progress;
``latest.pth`` holds nothing that depends on the number of processes, so a run resumes on any
number of them. Only this module and engine.py know about processes.

Files (run folder ``settings.run_dir``, locked while a run writes it): ``latest.pth`` (the
recipe's checkpoint + ``training``: epoch, optimiser, RNG state, history, recipe's resume state),
``epoch_{k}.pth`` (unless ``LoopSettings.epoch_files`` is off), ``best.pth`` (recipes with a
``select_key``), ``metrics.csv``, ``curves.png``. Each is written to a temporary name and
renamed, so an interrupted run leaves the last completed epoch's files; ``latest.pth`` is written
before the first epoch too. A full disk ends the run with one line naming the file.

Each epoch's row ends with its training time: ``seconds`` (the optimiser steps, without the
evaluation and the checkpoint), ``units_per_s`` (items of the recipe's ``unit``) and
``steps_per_s``; a run on a CUDA device adds ``cuda_peak_mib``, the most GPU memory allocated
during the epoch's steps (torch.cuda.max_memory_allocated, reset when the epoch starts).
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import InvalidInputError, WeightsError

ITEM_PURPOSE = 4  # seed purpose of the per-item seeds (recipes number theirs 1, 2, 3, ...)
LOOP_COLUMNS = ("epoch", "lr", "train_loss")
TIMING_COLUMNS = ("seconds", "units_per_s", "steps_per_s")
CUDA_COLUMNS = ("cuda_peak_mib",)  # only in runs on a CUDA device
TRAINING_KEYS = ("epoch", "optimizer", "rng", "history")


# ---------------------------------------------------------------------------------------------
# what the loop is given and what it gives back
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainEvent:
    """What a progress callback receives (on the main process only).

    kind: "start" (``total`` units still to do in this call, ``unit`` stimuli|triplets|...),
    "step" (``n`` units done, batch ``loss``), "epoch" (``row``: the epoch's metrics row).
    """

    kind: str
    epoch: int
    total_epochs: int
    unit: str = "stimuli"
    total: int = 0
    n: int = 0
    loss: float | None = None
    row: dict | None = None


Progress = Callable[[TrainEvent], None]


@dataclass(frozen=True)
class LoopSettings:
    """How to run a recipe.

    config            the run's options as a dict: saved in every checkpoint; ``config["seed"]`` is
                      the seed; on resume the ``resume_keys`` must match the checkpoint's
    seed_from_checkpoint  on resume, take the checkpoint's seed (the user gave none)
    eval_every        evaluate every this many epochs (and before the first, and after the last)
    stop_after_epoch  stop once this epoch has completed (a test hook for interrupted runs)
    inputs            files/folders the run reads: the run folder may not be one or lie inside one
    epoch_files       write epoch_{k}.pth after every epoch (off: latest.pth and best.pth only)
    """

    run_dir: Path
    total_epochs: int
    config: Mapping[str, Any]
    resume: bool = False
    seed_from_checkpoint: bool = False
    resume_keys: tuple[str, ...] = ()
    eval_every: int = 1
    device: str | torch.device = "auto"
    num_workers: int | None = None
    stop_after_epoch: int | None = None
    inputs: tuple[str, ...] = ()
    option: str = "--checkpoints-dir / --name"  # how the user names the run folder, for messages
    what: str = "iqa train"
    epoch_files: bool = True


@dataclass(frozen=True)
class RunContext:
    """What ``Recipe.prepare`` learns about the run."""

    seed: int
    device: torch.device
    num_workers: int | None
    config: Mapping[str, Any]
    resumed: dict | None  # the checkpoint's training state when resuming


@dataclass(frozen=True)
class Shard:
    """This process's part of one global batch."""

    epoch: int
    step: int  # 0-based step within the epoch
    items: Sequence[Any]  # this process's items, a contiguous block of the batch
    seeds: np.ndarray  # one seed per item: (run seed, epoch, step, position in the batch), whatever the processes
    start: int  # position of items[0] in the global batch
    size: int  # items in the global batch
    sizes: tuple[int, ...]  # every process's item count, in rank order

    def gather(self, x: torch.Tensor, rows_per_item: int | None = 1) -> torch.Tensor:
        """Every process's rows of ``x`` in batch order (autograd-aware). ``rows_per_item``: rows
        each item contributes (None: ask the other processes). Identity in one process."""
        from ..engine import gather_rows

        sizes = None if rows_per_item is None else [n * rows_per_item for n in self.sizes]
        return gather_rows(x, sizes)

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This process's items' rows of a tensor with one row per item of the global batch."""
        return x[self.start:self.start + len(self.items)]


@dataclass(frozen=True)
class Curves:
    """What curves.png shows: (key, label) series per panel, against the epoch."""

    loss: tuple[tuple[str, str], ...] = (("train_loss", "train"),)
    score: tuple[tuple[str, str], ...] = ()
    score_label: str = ""


class Recipe:
    """One training family; see the module docstring for what each method must do."""

    unit: str = "items"
    columns: tuple[str, ...] = ()
    eval_key: str = ""
    select_key: str = ""  # validation metric (higher = better) that picks best.pth; "" for none
    curves: Curves = Curves()
    n_train: int = 0  # items in the training / test sets, for the result (set them in prepare)
    n_test: int = 0

    def prepare(self, ctx: RunContext) -> None:
        pass

    def build(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def optimizer(self, modules: dict[str, nn.Module]) -> torch.optim.Optimizer:
        raise NotImplementedError

    def learning_rate(self, epoch: int, step: int, steps: int) -> float | Sequence[float]:
        raise NotImplementedError

    def after_step(self, modules: dict[str, nn.Module]) -> None:
        pass

    def after_epoch(self, modules: dict[str, nn.Module], epoch: int) -> None:
        pass

    def batches(self, epoch: int) -> Sequence[Sequence[Any]]:
        raise NotImplementedError

    def load(self, shard: Shard) -> Any:
        raise NotImplementedError

    def forward(self, modules: dict[str, nn.Module], data: Any, shard: Shard) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, modules: dict[str, nn.Module], outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def batch_stats(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        return {}

    def evaluate(self, modules: dict[str, nn.Module]) -> dict[str, Any]:
        return {}

    def checkpoint(self, modules: dict[str, nn.Module]) -> dict[str, Any]:
        raise NotImplementedError

    def resume_state(self, modules: dict[str, nn.Module]) -> dict[str, Any]:
        return {}

    def restore(self, modules: dict[str, nn.Module], checkpoint: dict[str, Any]) -> None:
        raise NotImplementedError

    def files(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class TrainResult:
    """What a run returns (the same on every process under torchrun; only the main one wrote files).
    ``mode`` is the config's method; ``model`` the recipe's ``modules["model"]``, in eval mode.
    ``best`` is the metrics row of the epoch saved as ``best_checkpoint`` (recipes with a
    ``select_key``; else {} and None)."""

    name: str
    mode: str
    run_dir: Path
    checkpoint: Path
    metrics_csv: Path
    curves_png: Path
    epochs_completed: int
    total_epochs: int
    resumed_from: int | None
    stopped_early: bool
    n_train: int
    n_test: int
    history: tuple[dict, ...]
    final: dict
    seconds: float
    config: dict
    best: dict = field(default_factory=dict)
    best_checkpoint: Path | None = None
    model: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        for key in ("run_dir", "checkpoint", "metrics_csv", "curves_png", "best_checkpoint"):
            d[key] = None if d[key] is None else str(d[key])
        d["history"] = [dict(r) for r in self.history]
        d["final"] = dict(self.final)
        d["best"] = dict(self.best)
        return d


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------

def run(recipe: Recipe, settings: LoopSettings, progress: Progress | None = None) -> TrainResult:
    """Train ``recipe`` under ``settings``; see the module docstring. Call it on every process."""
    from ..engine import process_rank, resolve_device, share_from_main, world_size
    from ..io.files import OutputLock

    start_time = time.perf_counter()
    device = resolve_device(settings.device)
    world = world_size()  # under torchrun: joins the process group
    main = process_rank() == 0
    lock = OutputLock(settings.run_dir, settings.what) if main else None
    try:
        config, checkpoint = share_from_main(lambda: _open_run(settings, lock))
        training = checkpoint["training"] if checkpoint is not None else None
        recipe.prepare(RunContext(int(config["seed"]), device, settings.num_workers, config, training))
        torch.manual_seed(int(config["seed"]))
        state = _Training(recipe, settings, config, device, world, main, progress)
        if checkpoint is not None:
            state.restore(checkpoint)
        if main:
            settings.run_dir.mkdir(parents=True, exist_ok=True)
            for name, text in recipe.files().items():
                write_text(settings.run_dir / name, text)
        return state.train(start_time)
    finally:
        if lock is not None:
            lock.release()


def _open_run(settings: LoopSettings, lock) -> tuple[dict, dict | None]:
    """(Main process, under the run-folder lock.) A new run must not overwrite one; --resume needs
    a compatible latest.pth. Returns the run's config (the checkpoint's seed when resuming without
    one) and, when resuming, the checkpoint. Nothing is written."""
    from ..io.files import check_output_path
    from ..weights import read_state_file

    run_dir = settings.run_dir
    check_output_path(run_dir, settings.option, folder=True, inputs=settings.inputs)
    if lock is not None:
        lock.acquire()
    latest = run_dir / "latest.pth"
    if latest.is_dir():
        raise InvalidInputError(f"{latest}: is a folder, not a checkpoint; move it away, or choose another --name")
    config = dict(settings.config)
    if not settings.resume:
        if latest.exists():
            raise InvalidInputError(f"{run_dir} already holds a run: pass --resume to continue it, or choose "
                                    f"another --name (or delete the folder)")
        return config, None
    if not latest.is_file():
        raise InvalidInputError(f"--resume: no checkpoint to resume at {latest} (drop --resume to start the run)")
    raw = read_state_file(latest)
    if not isinstance(raw, dict) or not isinstance(raw.get("training"), dict):
        raise WeightsError(f"--resume: {latest} is not a training checkpoint written by '{settings.what}' (no "
                           f"training state); start a new run with another --name")
    _check_training_state(latest, raw["training"], settings.what)
    # a recipe whose checkpoint "config" describes its model keeps the run's options under "run_config"
    saved = next((raw[k] for k in ("run_config", "config") if isinstance(raw.get(k), dict)), {})
    if settings.seed_from_checkpoint and isinstance(saved.get("seed"), int):
        config["seed"] = int(saved["seed"])
    diffs = [f"{k}={_norm(saved.get(k))!r} (now {_norm(config.get(k))!r})" for k in settings.resume_keys
             if _norm(saved.get(k)) != _norm(config.get(k))]
    if diffs:
        raise WeightsError(f"--resume: {latest} was written by an incompatible run: {'; '.join(diffs[:4])}"
                           f"{' ...' if len(diffs) > 4 else ''} (use the same options, or a new --name)")
    return config, raw


def _check_training_state(path: Path, training: dict, what: str) -> None:
    expected = {"epoch": int, "optimizer": dict, "rng": dict, "history": list}
    for key in TRAINING_KEYS:
        value = training.get(key)
        if not isinstance(value, expected[key]) or isinstance(value, bool):
            found = "is missing" if key not in training else f"is a {type(value).__name__}"
            raise WeightsError(f"--resume: {path}: the training state's '{key}' {found} (the file was not written "
                               f"whole by '{what}'); start a new run with another --name")
    if training["epoch"] < 0 or not torch.is_tensor(training["rng"].get("torch")):
        raise WeightsError(f"--resume: {path}: the training state's epoch or RNG state is damaged; start a new run "
                           f"with another --name")


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


class _Trainable(nn.Module):
    """The recipe's modules as one module, so DDP sees every trainable parameter and the forward."""

    def __init__(self, modules: dict[str, nn.Module], forward: Callable):
        super().__init__()
        self.parts = nn.ModuleDict(modules)
        self._forward = forward

    def forward(self, data, shard: Shard) -> dict[str, torch.Tensor]:
        return self._forward(dict(self.parts.items()), data, shard)


class _ShardData(Dataset):
    """Item k is the recipe's data for this process's shard of batch k (read in loader workers)."""

    def __init__(self, load: Callable[[Shard], Any], shards: Sequence[Shard]):
        self.load, self.shards = load, shards

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, k: int):
        return self.load(self.shards[k])


def item_seeds(seed: int, epoch: int, step: int, n: int) -> np.ndarray:
    """One seed per item of a global batch, from the run seed and the item's place only."""
    return np.random.default_rng([int(seed), ITEM_PURPOSE, int(epoch), int(step)]).integers(0, 2 ** 63, size=n)


class _Training:
    """One run's state on one process: modules, optimiser, history; the epochs; saving."""

    def __init__(self, recipe: Recipe, settings: LoopSettings, config: dict, device: torch.device, world: int,
                 main: bool, progress: Progress | None):
        from ..engine import data_parallel

        self.recipe, self.settings, self.config = recipe, settings, config
        self.seed = int(config["seed"])
        self.device, self.world, self.main, self.progress = device, world, main, progress
        self.run_dir = settings.run_dir
        self.latest = self.run_dir / "latest.pth"
        self.trainable = _Trainable(recipe.build(), recipe.forward).to(device)
        # Before the optimiser is made: several processes swap BatchNorm for SyncBatchNorm in place.
        self.model = data_parallel(self.trainable, device)
        self.modules = dict(self.trainable.parts.items())
        self.optimizer = recipe.optimizer(self.modules)
        self.params = [p for p in self.trainable.parameters() if p.requires_grad and p.numel() > 0]
        self.history: list[dict] = []
        self.epoch = 0
        self.resumed_from: int | None = None

    # -- resume ------------------------------------------------------------------------------------
    def restore(self, checkpoint: dict) -> None:
        training = checkpoint["training"]
        self.recipe.restore(self.modules, checkpoint)
        try:
            self.optimizer.load_state_dict(training["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise WeightsError(f"--resume: {self.latest}: optimizer state does not fit this run ({exc})") from None
        try:
            torch.set_rng_state(training["rng"]["torch"])
            if self.device.type == "cuda" and training["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state_all(training["rng"]["cuda"])
        except (TypeError, RuntimeError, ValueError) as exc:
            raise WeightsError(f"--resume: {self.latest}: the saved RNG state is damaged ({exc}); start a new run "
                               f"with another --name") from None
        self.history = [dict(r) for r in training["history"] if isinstance(r, dict)]
        self.epoch = self.resumed_from = int(training["epoch"])

    # -- progress ----------------------------------------------------------------------------------
    def emit(self, **kwargs) -> None:
        if self.main and self.progress is not None:
            self.progress(TrainEvent(total_epochs=self.settings.total_epochs, unit=self.recipe.unit, **kwargs))

    # -- the epochs --------------------------------------------------------------------------------
    def train(self, start_time: float) -> TrainResult:
        from ..engine import barrier

        settings, total = self.settings, self.settings.total_epochs
        if self.resumed_from is None:
            row = {"epoch": 0, "lr": None, "train_loss": None, **self.evaluate()}
            self.history.append(row)
            self.save(0)
            self.emit(kind="epoch", epoch=0, row=row)
        remaining = total - self.epoch
        if settings.stop_after_epoch is not None:
            remaining = max(0, min(remaining, settings.stop_after_epoch - self.epoch))
        per_epoch = sum(len(b) for b in self.recipe.batches(self.epoch + 1)) if remaining > 0 else 0
        self.emit(kind="start", epoch=self.epoch, total=remaining * per_epoch)
        stopped = False
        for epoch in range(self.epoch + 1, total + 1):
            if self._should_stop(self.epoch):
                stopped = True
                break
            row = self.train_epoch(epoch)
            self.recipe.after_epoch(self.modules, epoch)
            if epoch % settings.eval_every == 0 or epoch == total:
                row.update(self.evaluate())
            self.history.append(row)
            self.epoch = epoch
            self.save(epoch)
            self.emit(kind="epoch", epoch=epoch, row=row)
        stopped = stopped or self._should_stop(self.epoch)
        csv_path, png_path = self.write_logs()
        barrier()  # every process leaves with the files written
        for module in self.modules.values():
            module.eval()
        key = self.recipe.eval_key
        evaluated = [r for r in self.history if r.get(key) is not None]
        recipe = self.recipe
        best = self.best_row()
        return TrainResult(
            name=self.run_dir.name, mode=str(self.config.get("mode", self.config.get("method", ""))),
            run_dir=self.run_dir, checkpoint=self.latest, metrics_csv=csv_path, curves_png=png_path,
            epochs_completed=self.epoch, total_epochs=total, resumed_from=self.resumed_from, stopped_early=stopped,
            n_train=int(recipe.n_train), n_test=int(recipe.n_test), history=tuple(dict(r) for r in self.history),
            final=dict(evaluated[-1]) if evaluated else {}, seconds=time.perf_counter() - start_time,
            config=dict(self.config), best=dict(best) if best else {},
            best_checkpoint=self.run_dir / "best.pth" if best else None, model=self.modules.get("model"))

    def best_row(self) -> dict | None:
        """The evaluated epoch with the highest ``select_key`` (earliest on ties, NaN lowest), or None."""
        key = self.recipe.select_key
        best, best_value = None, -math.inf
        for row in self.history if key else ():
            value = row.get(key)
            if value is None:
                continue
            value = float(value) if not math.isnan(float(value)) else -math.inf
            if best is None or value > best_value:
                best, best_value = row, value
        return best

    def _should_stop(self, epoch: int) -> bool:
        stop = self.settings.stop_after_epoch
        return stop is not None and stop <= epoch < self.settings.total_epochs

    def shards(self, epoch: int, batches: Sequence[Sequence[Any]]) -> list[Shard]:
        from ..engine import process_rank, shard_bounds

        rank = process_rank() if self.world > 1 else 0
        out = []
        for step, batch in enumerate(batches):
            blocks = [shard_bounds(len(batch), rank=r, world=self.world) for r in range(self.world)]
            mine = blocks[rank]
            seeds = item_seeds(self.seed, epoch, step, len(batch))[mine.start:mine.stop]
            out.append(Shard(epoch, step, list(batch[mine.start:mine.stop]), seeds, mine.start, len(batch),
                             tuple(len(b) for b in blocks)))
        return out

    def train_epoch(self, epoch: int) -> dict:
        from ..engine import make_loader

        cuda = self.device.type == "cuda"
        if cuda:  # the epoch's own peak: weights, optimiser state and activations
            torch.cuda.reset_peak_memory_stats(self.device)
        tic = time.perf_counter()
        recipe = self.recipe
        shards = self.shards(epoch, recipe.batches(epoch))
        loader = make_loader(_ShardData(recipe.load, shards), None, self.device, num_workers=self.settings.num_workers)
        self.model.train()
        first_lr: float | None = None
        loss_sum, seen, stats = 0.0, 0, {}
        for shard, data in zip(shards, loader):
            lr = self.set_lr(recipe.learning_rate(epoch, shard.step, len(shards)))
            first_lr = lr if first_lr is None else first_lr
            local = self.model(data, shard)
            outputs = {k: _gather_items(v, shard) for k, v in local.items()}
            loss = recipe.loss(self.modules, outputs)
            self.step(loss)
            value = float(loss.detach())
            loss_sum += value * shard.size
            seen += shard.size
            with torch.no_grad():
                for key, total in recipe.batch_stats(outputs).items():
                    stats[key] = stats.get(key, 0.0) + float(total)
            self.emit(kind="step", epoch=epoch, n=shard.size, loss=value)
        seconds = time.perf_counter() - tic
        row = {"epoch": epoch, "lr": first_lr, "train_loss": loss_sum / max(seen, 1),
               **{k: v / max(seen, 1) for k, v in stats.items()},
               "seconds": seconds, "units_per_s": seen / seconds if seconds > 0 else None,
               "steps_per_s": len(shards) / seconds if seconds > 0 else None}
        if cuda:
            row["cuda_peak_mib"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        return row

    def set_lr(self, lr: float | Sequence[float]) -> float:
        groups = self.optimizer.param_groups
        rates = [float(lr)] * len(groups) if np.ndim(lr) == 0 else [float(x) for x in lr]
        if len(rates) != len(groups):
            raise ValueError(f"learning_rate gave {len(rates)} rates for {len(groups)} parameter groups")
        for group, rate in zip(groups, rates):
            group["lr"] = rate
        return rates[0]

    def step(self, loss: torch.Tensor) -> None:
        if self.world > 1:
            # Every trainable parameter in every process's graph, even on a process whose shard of
            # the batch is empty, so DDP's gradient averaging always finds them all (adds 0).
            loss = loss + 0.0 * sum(p[(0,) * p.dim()] for p in self.params)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.recipe.after_step(self.modules)

    def evaluate(self) -> dict:
        for module in self.modules.values():
            module.eval()
        try:
            with torch.no_grad():
                return dict(self.recipe.evaluate(self.modules))
        finally:
            for module in self.modules.values():
                module.train()

    # -- files (main process only) -----------------------------------------------------------------
    def save(self, epoch: int) -> None:
        if not self.main:
            return
        payload = dict(self.recipe.checkpoint(self.modules))
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        training = {**self.recipe.resume_state(self.modules), "epoch": epoch,
                    "total_epochs": self.settings.total_epochs, "optimizer": self.optimizer.state_dict(), "rng": rng,
                    "history": [dict(r) for r in self.history], "processes": self.world}
        if epoch > 0 and self.settings.epoch_files:
            write_checkpoint(self.run_dir / f"epoch_{epoch}.pth", {**payload, "epoch": epoch})
        best = self.best_row()
        if best is not None and best["epoch"] == epoch:  # before latest.pth: a resumed run never misses it
            key = self.recipe.select_key
            write_checkpoint(self.run_dir / "best.pth", {**payload, "epoch": epoch, "selected_by": {key: best[key]}})
        write_checkpoint(self.latest, {**payload, "epoch": epoch, "training": training})
        self.write_logs()

    def columns(self) -> tuple[str, ...]:
        cuda = CUDA_COLUMNS if self.device.type == "cuda" else ()
        return (*LOOP_COLUMNS, *self.recipe.columns, *TIMING_COLUMNS, *cuda)

    def write_logs(self) -> tuple[Path, Path]:
        csv_path, png_path = self.run_dir / "metrics.csv", self.run_dir / "curves.png"
        if self.main:
            write_metrics_csv(csv_path, self.history, self.columns())
            write_curves(png_path, self.history, self.recipe.curves)
        return csv_path, png_path


def _gather_items(x: torch.Tensor, shard: Shard) -> torch.Tensor:
    if x.shape[0] != len(shard.items):
        raise ValueError(f"the recipe's forward gave {x.shape[0]} rows for {len(shard.items)} items: outputs need "
                         f"one row per item")
    return shard.gather(x)


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _reported(path: Path) -> Iterator[None]:
    """A failed write of ``path`` (disk full, read-only) as the shared one-line WriteError naming
    ``path`` (io/files.write_failure), with what a training run can do about it."""
    from ..errors import WriteError
    from ..io.files import write_failure

    try:
        yield
    except OSError as exc:
        error = exc if isinstance(exc, WriteError) else write_failure(path, exc, "it")
        if error is None:
            raise
        raise WriteError(f"{error}; --resume continues from the last epoch saved") from None


def write_checkpoint(path: Path, payload: dict) -> Path:
    """torch.save ``payload`` to ``path`` atomically; serialised in memory first, so that a full disk
    is an OSError from the file write (torch's own writer reports it as a RuntimeError)."""
    from ..io.files import atomic_path

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with _reported(path), atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return path


def write_text(path: Path, text: str) -> Path:
    """A small text file in the run folder, atomically; a full disk is one line naming it."""
    from ..io.files import atomic_path

    with _reported(path), atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_metrics_csv(path: Path, history: Sequence[dict], columns: Sequence[str]) -> Path:
    from ..io.files import write_csv

    extra = sorted({k for row in history for k in row} - set(columns))
    header = [*columns, *extra]
    with _reported(path):
        return write_csv(path, header, [[_fmt(row.get(c)) for c in header] for row in history])


def write_curves(path: Path, history: Sequence[dict], curves: Curves) -> Path:
    """Loss and the evaluation scores per epoch as a PNG (matplotlib's Agg canvas; no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..io.files import atomic_path

    def series(key):
        pts = [(r["epoch"], r[key]) for r in history
               if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key]))]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_score = fig.subplots(1, 2)
    for (key, label), style in zip(curves.loss, ("o-", "s--", "^:", "d-.")):
        ax_loss.plot(*series(key), style, label=label)
    for key, label in curves.score:
        ax_score.plot(*series(key), "o-", label=label)
    ax_score.set_ylabel(curves.score_label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_score.set_xlabel("epoch")
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    with _reported(path), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
