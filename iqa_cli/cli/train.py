"""`iqa train`: learn Graphics-LPIPS heads from MOS (a patch store) or LPIPS heads from BAPPS; ASNA on a
full-reference database and its learned sorter (cli/train_asna.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional

import typer

from .common import BackboneWeightsOpt, DeviceOpt, JsonOpt, MultiValueOptionsCommand, emit_json, err_console, progress_bar


class TrainCommand(MultiValueOptionsCommand):
    """``--datasets train/traditional train/cnn train/mix``, as the original training script."""

    multi_value_options = ("--datasets", "--val-datasets")


def _in_range(low: float, high: float | None = None, low_inclusive: bool = False, high_inclusive: bool = False):
    """A callback rejecting floats outside (low, high) as a usage error (exit 2), like min=/max= do for
    integers; NaN is outside every range."""
    def check(value: float | None) -> float | None:
        if value is None:
            return value
        above = value >= low if low_inclusive else value > low
        below = high is None or (value <= high if high_inclusive else value < high)
        if not (above and below):
            bound = f"{'>=' if low_inclusive else '>'} {low:g}" + (
                f" and {'<=' if high_inclusive else '<'} {high:g}" if high is not None else "")
            raise typer.BadParameter(f"{value:g} is not a number {bound}")
        return value
    return check


def _seed_fits_torch(value: int | None) -> int | None:
    if value is not None and value >= 2**64:
        raise typer.BadParameter(f"{value} is too large: torch seeds are 64-bit (below 2**64)")
    return value


def _split_values(values: Optional[List[str]]) -> Optional[tuple[str, ...]]:
    if values is None:
        return None
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def train(
    ctx: typer.Context,
    store: Optional[Path] = typer.Argument(None, help="Patch store with MOS (from iqa patchify); with --method asna, "
                                           "the database folder. Leave out with --bapps and --method sorter.",
                                           show_default=False),
    name: str = typer.Option(..., "--name", help="Run name: files go to CHECKPOINTS_DIR/NAME/.", show_default=False),
    method: Optional[str] = typer.Option(None, "--method", help="Training recipe: mos (a patch store with MOS) | "
                                         "bapps (--bapps 2AFC) | asna (a full-reference database) | sorter (ASNA's "
                                         "learned ranker). Default: bapps with --bapps, else mos.",
                                         show_default=False),
    checkpoints_dir: Path = typer.Option(Path("checkpoints"), "--checkpoints-dir", help="Where run folders go."),
    n_input_img: int = typer.Option(4, "--nInputImg", "--n-input-img", min=1,
                                    help="Stimuli per optimiser step (whole stimuli)."),
    npatches: int = typer.Option(150, "--npatches", min=1, help="Patches each stimulus contributes per epoch."),
    nepoch: int = typer.Option(5, "--nepoch", min=0, help="Epochs at the base learning rate (asna, sorter: "
                               "all epochs, default 30 and 100)."),
    nepoch_decay: int = typer.Option(5, "--nepoch_decay", "--nepoch-decay", min=0,
                                     help="Epochs of linear learning-rate decay after those."),
    lr: float = typer.Option(1e-4, "--lr", callback=_in_range(0), help="Base learning rate (Adam, beta1 0.5; "
                             "sorter: default 1e-3)."),
    testset_freq: int = typer.Option(2, "--testset_freq", "--testset-freq", min=1,
                                     help="Evaluate on the test set every this many epochs (and after the last)."),
    net: str = typer.Option("alex", "--net", help="Backbone: alex | vgg | squeeze."),
    head: Optional[str] = typer.Option(None, "--head", help="graphics (MLP heads) | lpips (linear heads). "
                                       "Default: graphics for a store, lpips for --bapps.", show_default=False),
    version: str = typer.Option("0.1", "--version", help="LPIPS input scaling: 0.1 or 0.0."),
    loss: str = typer.Option("mse", "--loss", help="mse | rank (1 - soft-rank Spearman) | mse+rank."),
    rank_weight: float = typer.Option(1.0, "--rank-weight", callback=_in_range(0, low_inclusive=True),
                                      help="Weight of the rank term in mse+rank (asna: s, "
                                      "default 0.1)."),
    rank_temperature: float = typer.Option(0.1, "--rank-temperature", callback=_in_range(0),
                                           help="Soft-rank temperature, in units of the batch's score std."),
    split: Optional[float] = typer.Option(None, "--split", callback=_in_range(0, 1),
                                          help="Training fraction of a random by-stimulus split. Default: the store's "
                                          "split column when it labels every stimulus train/test, else 0.8. asna: the "
                                          "fraction of contents, default 0.8.",
                                          show_default=False),
    train_csv: Optional[Path] = typer.Option(None, "--train-csv", help="CSV with a 'stimulus' column: the training "
                                             "stimuli (alone: the rest are tested).", show_default=False),
    test_csv: Optional[Path] = typer.Option(None, "--test-csv", help="CSV with a 'stimulus' column: the test "
                                            "stimuli (alone: the rest are trained on).", show_default=False),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, callback=_seed_fits_torch,
                                       help="Seed of the split, sampling, init and dropout (default: random, "
                                       "recorded in the checkpoint).", show_default=False),
    device: str = DeviceOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue the run NAME from its latest.pth."),
    train_trunk: bool = typer.Option(False, "--train-trunk", help="Train the backbone too (default: frozen)."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Start from random backbone weights."),
    backbone_weights: Optional[Path] = BackboneWeightsOpt,
    bapps: Optional[Path] = typer.Option(None, "--bapps", help="Train LPIPS heads on this BAPPS 'dataset' folder "
                                         "(2AFC, Dist2Logit + BCE) instead of a store.", show_default=False),
    datasets: Optional[List[str]] = typer.Option(None, "--datasets", help="BAPPS training subsets (several after "
                                                 "one flag; default train/traditional train/cnn train/mix).",
                                                 show_default=False),
    val_datasets: Optional[List[str]] = typer.Option(None, "--val-datasets", help="BAPPS subsets evaluated every "
                                                     "--testset_freq epochs (default: every val/* subset present).",
                                                     show_default=False),
    batch_size: int = typer.Option(50, "--batch-size", min=1, help="BAPPS: triplets per optimiser step; asna: "
                                    "pairs (default 16); sorter: vectors (default 1024)."),
    eval_batch_size: int = typer.Option(256, "--eval-batch-size", min=1,
                                        help="Patch pairs per forward pass when scoring the test set "
                                        "(asna: image pairs, default 16)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="BAPPS: only the first N triplets of each subset.",
                                        show_default=False),
    workers: Optional[int] = typer.Option(None, "--workers", min=0,
                                          help="DataLoader worker processes (default: by device).",
                                          show_default=False),
    db_format: str = typer.Option("auto", "--format", help="asna: the database format (tid2013, kadid10k, pipal, "
                                  "pieapp, csv, ...) or auto."),
    db_options: List[str] = typer.Option([], "--db-option", metavar="NAME=VALUE", help="asna: a reader option; "
                                         "repeatable."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="asna: HDF5 image cache to use or build (default: "
                                         "eval-db's, under $IQA_CACHE_DIR or ~/.cache/iqa).", show_default=False),
    no_cache: bool = typer.Option(False, "--no-cache", help="asna: decode the image files every epoch instead."),
    variant: Optional[str] = typer.Option(None, "--variant", help="asna: simple | bn | attention | tiled "
                                          "(default: the preset's).", show_default=False),
    preset: Optional[str] = typer.Option(None, "--preset", help="asna: a published configuration (simple, bn, "
                                         "attention, tiled; default: the variant's); sorter: original | small.",
                                         show_default=False),
    size: Optional[int] = typer.Option(None, "--size", min=8, help="asna: crop side the network takes (default "
                                       "288; a multiple of 8).", show_default=False),
    mse_weight: float = typer.Option(0.1, "--mse-weight", callback=_in_range(0, 1, True, True),
                                     help="asna: m in m*MSE + (1-m)*(1-r^2) + s*rank."),
    ranker: str = typer.Option("soft", "--ranker", help="asna: the rank term's ranker: soft (soft rank, any batch) "
                               "| sorter (a frozen learned sorter; batches of exactly 16)."),
    target_ranks: str = typer.Option("exact", "--target-ranks", help="asna: exact ranks of the targets, or sorter "
                                     "(the original's: the targets through the ranker too)."),
    sorter: Optional[Path] = typer.Option(None, "--sorter", help="asna --ranker sorter: a sorter checkpoint "
                                          "('iqa train --method sorter'; default: the bundled one).",
                                          show_default=False),
    val_fraction: float = typer.Option(0.1, "--val-fraction", callback=_in_range(0, 1, low_inclusive=True),
                                       help="asna: training contents held out to choose the best epoch (0: none)."),
    standardise: str = typer.Option("auto", "--standardise", help="asna: score standardisation: auto (TID and "
                                    "PIPAL: the original's constants; else the training part's) | train | tid | "
                                    "pipal | pieapp."),
    train_crop: str = typer.Option("random", "--train-crop", help="asna: random | center crop of each pair."),
    eval_crop: str = typer.Option("center", "--eval-crop", help="asna: center | grid crops when evaluating."),
    small: str = typer.Option("pad", "--small", help="asna: images smaller than the crop: pad (black, centred; "
                              "the original's PieAPP rule) | resize."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="asna: the original's rotations, flips and "
                                 "brightness, drawn per pair."),
    decay_every: Optional[int] = typer.Option(None, "--decay-every", min=1, help="asna, sorter: multiply the "
                                              "learning rate by --decay every this many epochs (default 10; sorter "
                                              "30).", show_default=False),
    decay: float = typer.Option(0.1, "--decay", callback=_in_range(0, 1, high_inclusive=True),
                                help="asna, sorter: the step decay factor."),
    vectors: int = typer.Option(2_000_000, "--vectors", min=2, help="sorter: random training vectors."),
    as_json: bool = JsonOpt,
) -> None:
    """Train perceptual-metric heads: Graphics-LPIPS from MOS, or LPIPS from BAPPS 2AFC judgments.

    Writes CHECKPOINTS_DIR/NAME/latest.pth, epoch_K.pth, metrics.csv and curves.png; the checkpoints load in score-pair, score-mesh-db and eval-bapps with --checkpoint.

    Under torchrun: --nInputImg and --batch-size count for the whole job; --seed gives one process's weights.

    \b
    Examples:
      iqa train db.h5 --name glpips --nInputImg 4 --npatches 150 --nepoch 5 --nepoch_decay 5
      iqa train db.h5 --name glpips_rank --loss mse+rank --split 0.8 --seed 1
      iqa train db.h5 --name glpips --resume                     # after Ctrl-C
      iqa train --bapps dataset/ --datasets train/traditional train/cnn train/mix --head lpips --name lpips_alex
      torchrun --nproc_per_node 4 -m iqa_cli train db.h5 --name glpips --seed 1   # 4 GPUs, same result
      iqa train --method asna tid2013/ --name asna_tid --variant bn --nepoch 30 --seed 1
      iqa train --method asna pipal/ --name asna_pipal --ranker sorter --mse-weight 0.5 --rank-weight 0.1
      iqa train --method sorter --name sorter16 --preset small --vectors 400000 --nepoch 5
    """
    from ..errors import InvalidInputError

    if method in ("asna", "sorter"):
        from .train_asna import train_asna_command

        train_asna_command(ctx, dict(locals()))
        return
    from .train_asna import reject_family_options

    reject_family_options(ctx, method or "mos")
    from ..training import BAPPS_TRAIN_SETS, TrainConfig

    if bapps is not None and store is not None:
        raise InvalidInputError(f"give either a patch store ({store}) or --bapps {bapps}, not both")
    if bapps is None and store is None:
        raise InvalidInputError("nothing to train on: give a patch store STORE.h5 (from iqa patchify) or --bapps ROOT")
    if bapps is None and (datasets or val_datasets):
        raise InvalidInputError("--datasets and --val-datasets are for --bapps training")
    config = TrainConfig(
        name=name, method=method, store=str(store) if store is not None else None,
        bapps_root=str(bapps) if bapps is not None else None,
        datasets=_split_values(datasets) or BAPPS_TRAIN_SETS, val_datasets=_split_values(val_datasets),
        checkpoints_dir=str(checkpoints_dir), net=net, head=head, version=version, loss=loss,
        rank_weight=rank_weight, rank_temperature=rank_temperature, n_input_img=n_input_img, npatches=npatches,
        batch_size=batch_size, nepoch=nepoch, nepoch_decay=nepoch_decay, lr=lr, testset_freq=testset_freq,
        split=split, train_csv=str(train_csv) if train_csv else None, test_csv=str(test_csv) if test_csv else None,
        seed=seed, device=device, train_trunk=train_trunk, from_scratch=from_scratch,
        backbone_weights=str(backbone_weights) if backbone_weights else None, eval_batch_size=eval_batch_size,
        num_workers=workers, bapps_limit=limit, resume=resume)

    from ..training import train as run_training

    result = run_reported(lambda progress: run_training(config, progress=progress), Path(checkpoints_dir) / name)

    if as_json:
        emit_json(result.to_dict())
        return
    _print_summary(result)


def run_reported(train_run, run_dir: Path, line=None):
    """``train_run(progress)`` with a progress bar and one ``line(row, total)`` per epoch on stderr;
    Ctrl-C ends it with one line saying what --resume continues from (exit 130)."""
    reporter = _Reporter(line or _epoch_line)
    try:
        with reporter:
            return train_run(reporter)
    except KeyboardInterrupt:
        done = reporter.last_epoch
        where = (f"{run_dir / 'latest.pth'} holds epoch {done}; continue with --resume" if done is not None
                 else "no epoch completed")
        err_console.print(f"[bold red]interrupted[/]: {where}")
        raise typer.Exit(130) from None


class _Reporter:
    """Progress callback: a bar (stimuli/s or triplets/s, loss) and one log line per epoch on stderr."""

    def __init__(self, line):
        self.stack = contextlib.ExitStack()
        self.advance = None
        self.line = line
        self.last_epoch: int | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stack.close()

    def __call__(self, event) -> None:
        if event.kind == "start":
            self.stack.close()
            if event.total > 0:
                self.advance = self.stack.enter_context(progress_bar("training", event.total, event.unit))
        elif event.kind == "step" and self.advance is not None:
            self.advance(event.n, postfix=f"epoch {event.epoch}/{event.total_epochs}  loss {event.loss:.4g}")
        elif event.kind == "epoch":
            self.last_epoch = event.epoch
            err_console.print(self.line(event.row, event.total_epochs))


def _num(value, fmt: str = ".4f") -> str:
    return "-" if value is None or value != value else format(value, fmt)


def epoch_line_start(row: dict, total: int) -> list[str]:
    """The start of every recipe's epoch line: epoch, learning rate, training loss."""
    parts = [f"epoch {row['epoch']}/{total}"]
    if row.get("lr") is not None:
        parts.append(f"lr {row['lr']:.3g}")
    if row.get("train_loss") is not None:
        parts.append(f"train loss {row['train_loss']:.4g}")
    return parts


def _epoch_line(row: dict, total: int) -> str:
    parts = epoch_line_start(row, total)
    if row.get("test_loss") is not None:
        parts.append(f"test loss {row['test_loss']:.4g}  RMSE {_num(row.get('test_rmse'))}  "
                     f"SROCC {_num(row.get('test_srocc'))}  PLCC {_num(row.get('test_plcc'))}")
    if row.get("train_2afc") is not None:
        parts.append(f"train 2AFC {_num(row.get('train_2afc'))}")
    if row.get("val_2afc") is not None:
        parts.append(f"val 2AFC {_num(row.get('val_2afc'))}")
    if row.get("units_per_s") is not None:
        parts.append(f"({row['units_per_s']:.1f}/s)")
    return "  ".join(parts)


def _print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"iqa train {result.name} ({result.mode}, {result.config['net']}, "
                        f"{result.config['head']} heads)")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("epochs", f"{result.epochs_completed}/{result.total_epochs}"
                  + (f" (resumed from {result.resumed_from})" if result.resumed_from is not None else "")
                  + (" (stopped early)" if result.stopped_early else ""))
    if result.mode == "mos":
        table.add_row("stimuli train / test", f"{result.n_train} / {result.n_test}")
        for key, label in (("test_loss", "test loss"), ("test_rmse", "test RMSE (raw)"), ("test_srocc", "test SROCC"),
                           ("test_plcc", "test PLCC")):
            table.add_row(label, _num(result.final.get(key)))
    else:
        table.add_row("training triplets", str(result.n_train))
        table.add_row("val 2AFC (mean)", _num(result.final.get("val_2afc")))
        for key, value in result.final.items():
            if key.startswith("val_") and key != "val_2afc":
                table.add_row(f"  {key[4:]}", _num(value))
    table.add_row("checkpoint", str(result.checkpoint))
    table.add_row("metrics", str(result.metrics_csv))
    table.add_row("curves", str(result.curves_png))
    table.add_row("time", f"{result.seconds:.1f} s")
    Console().print(table)
