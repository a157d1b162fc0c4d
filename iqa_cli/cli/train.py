"""`iqa train`: learn Graphics-LPIPS heads from MOS (a patch store) or LPIPS heads from BAPPS, or pretrain
and fine-tune GraphIQA on a database folder."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional

import typer

from .common import BackboneWeightsOpt, DeviceOpt, JsonOpt, MultiValueOptionsCommand, emit_json, err_console, progress_bar


GRAPHIQA_METHODS = ("graphiqa-pretrain", "graphiqa")  # training/graphiqa.py (not imported here: --help stays fast)


class TrainCommand(MultiValueOptionsCommand):
    """``--datasets train/traditional train/cnn train/mix``, as the original training script."""

    multi_value_options = ("--datasets", "--val-datasets")


def _in_range(low: float, high: float | None = None, low_inclusive: bool = False):
    """A callback rejecting floats outside (low, high) as a usage error (exit 2), like min=/max= do for
    integers; NaN is outside every range."""
    def check(value: float | None) -> float | None:
        if value is None:
            return value
        above = value >= low if low_inclusive else value > low
        if not (above and (high is None or value < high)):
            bound = f"{'>=' if low_inclusive else '>'} {low:g}" + (f" and < {high:g}" if high is not None else "")
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
    store: Optional[Path] = typer.Argument(None, help="Patch store with MOS (from iqa patchify); for the graphiqa "
                                           "methods, the database folder. Leave out with --bapps.",
                                           show_default=False),
    name: str = typer.Option(..., "--name", help="Run name: files go to CHECKPOINTS_DIR/NAME/.", show_default=False),
    method: Optional[str] = typer.Option(None, "--method", help="Training recipe: mos (a patch store with MOS) | "
                                         "bapps (--bapps 2AFC) | graphiqa-pretrain (distortion type and level of "
                                         "a database) | graphiqa (MOS of a database). Default: bapps with --bapps, "
                                         "else mos.", show_default=False),
    checkpoints_dir: Path = typer.Option(Path("checkpoints"), "--checkpoints-dir", help="Where run folders go."),
    n_input_img: int = typer.Option(4, "--nInputImg", "--n-input-img", min=1,
                                    help="Stimuli per optimiser step (whole stimuli)."),
    npatches: int = typer.Option(150, "--npatches", min=1, help="Patches each stimulus contributes per epoch."),
    nepoch: Optional[int] = typer.Option(None, "--nepoch", min=0, show_default="5; graphiqa-pretrain 10, graphiqa 50",
                                         help="Epochs at the base learning rate."),
    nepoch_decay: Optional[int] = typer.Option(None, "--nepoch_decay", "--nepoch-decay", min=0,
                                               show_default="5; graphiqa methods 0",
                                               help="Epochs of linear learning-rate decay after those."),
    lr: Optional[float] = typer.Option(None, "--lr", callback=_in_range(0),
                                       show_default="1e-4; graphiqa-pretrain 1e-5, graphiqa 5e-6",
                                       help="Base learning rate (Adam; beta1 0.5 for mos and bapps)."),
    testset_freq: Optional[int] = typer.Option(None, "--testset_freq", "--testset-freq", min=1,
                                               show_default="2; graphiqa methods 1",
                                               help="Evaluate on the test set every this many epochs (and after the "
                                               "last)."),
    net: str = typer.Option("alex", "--net", help="Backbone: alex | vgg | squeeze."),
    head: Optional[str] = typer.Option(None, "--head", help="graphics (MLP heads) | lpips (linear heads). "
                                       "Default: graphics for a store, lpips for --bapps.", show_default=False),
    version: str = typer.Option("0.1", "--version", help="LPIPS input scaling: 0.1 or 0.0."),
    loss: str = typer.Option("mse", "--loss", help="mse | rank (1 - soft-rank Spearman) | mse+rank."),
    rank_weight: float = typer.Option(1.0, "--rank-weight", callback=_in_range(0, low_inclusive=True),
                                      help="Weight of the rank term in mse+rank."),
    rank_temperature: float = typer.Option(0.1, "--rank-temperature", callback=_in_range(0),
                                           help="Soft-rank temperature, in units of the batch's score std."),
    split: Optional[float] = typer.Option(None, "--split", callback=_in_range(0, 1),
                                          help="Training fraction of a random by-stimulus split. Default: the store's "
                                          "split column when it labels every stimulus train/test, else 0.8. graphiqa "
                                          "methods: by the database's protocol (contents of synthetic databases), "
                                          "default 0.8 (graphiqa-pretrain 0.9: the rest is held out).",
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
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, show_default="50; graphiqa methods 32",
                                             help="BAPPS: triplets per optimiser step; graphiqa-pretrain: crops per "
                                             "graph; graphiqa: images per step."),
    eval_batch_size: Optional[int] = typer.Option(None, "--eval-batch-size", min=1, show_default="256; graphiqa 8",
                                                  help="Patch pairs per forward pass when scoring the test set "
                                                  "(graphiqa: images per scoring work item)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="BAPPS: only the first N triplets of each subset.",
                                        show_default=False),
    workers: Optional[int] = typer.Option(None, "--workers", min=0,
                                          help="DataLoader worker processes (default: by device).",
                                          show_default=False),
    db_format: str = typer.Option("auto", "--format", help="graphiqa methods: the database format (kadid10k, tid2013, "
                                  "koniq10k, csv, ... or auto), as in eval-db."),
    db_options: List[str] = typer.Option([], "--db-option", metavar="NAME=VALUE",
                                         help="graphiqa methods: a database reader option, as in eval-db; repeatable."),
    init: Optional[Path] = typer.Option(None, "--init", help="graphiqa: start from this GraphIQA checkpoint (a "
                                        "graphiqa-pretrain run's latest.pth, or an original Reg_Domain file).",
                                        show_default=False),
    embed_size: Optional[int] = typer.Option(None, "--embed-size", min=1, show_default="the --init file's, else 64",
                                             help="graphiqa methods: edge embedding size K (one K for both stages)."),
    crops: int = typer.Option(25, "--crops", min=1, help="graphiqa: crops per image (one graph), in training and in "
                              "the validation/test scoring."),
    crop_size: int = typer.Option(224, "--crop-size", min=32, help="graphiqa methods: crop side in pixels (224 as "
                                  "published; smaller only for quick checks)."),
    steps: int = typer.Option(500, "--steps", min=1, help="graphiqa-pretrain: steps (triplets) per epoch."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", callback=_in_range(0, 1),
                                       help="graphiqa: fraction of the training part held out to pick the best "
                                       "epoch (best.pth); the test part never picks."),
    eval_triplets: int = typer.Option(20, "--eval-triplets", min=1,
                                      help="graphiqa-pretrain: held-out triplets scored at each evaluation."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="graphiqa methods: HDF5 image cache to use or build "
                                         "(default: eval-db's, under $IQA_CACHE_DIR or ~/.cache/iqa).",
                                         show_default=False),
    short_side: Optional[int] = typer.Option(None, "--short-side", min=0, show_default="the database's; the crop size "
                                             "when an image is smaller", help="graphiqa methods: resize every image's "
                                             "shorter side first (0: full size)."),
    as_json: bool = JsonOpt,
) -> None:
    """Train perceptual-metric heads: Graphics-LPIPS from MOS, or LPIPS from BAPPS 2AFC judgments; or GraphIQA: pretraining on distortion types and levels, fine-tuning on MOS.

    Writes CHECKPOINTS_DIR/NAME/latest.pth, epoch_K.pth, metrics.csv and curves.png; the checkpoints load in score-pair, score-mesh-db and eval-bapps with --checkpoint.

    GraphIQA (docs/graphiqa.md): latest.pth, split.json and, fine-tuning, best.pth (the best validation epoch), for score-image / eval-db --metric graphiqa --checkpoint; no epoch_K.pth.

    Under torchrun: --nInputImg and --batch-size count for the whole job; --seed gives one process's weights.

    \b
    Examples:
      iqa train db.h5 --name glpips --nInputImg 4 --npatches 150 --nepoch 5 --nepoch_decay 5
      iqa train db.h5 --name glpips_rank --loss mse+rank --split 0.8 --seed 1
      iqa train db.h5 --name glpips --resume                     # after Ctrl-C
      iqa train --bapps dataset/ --datasets train/traditional train/cnn train/mix --head lpips --name lpips_alex
      torchrun --nproc_per_node 4 -m iqa_cli train db.h5 --name glpips --seed 1   # 4 GPUs, same result
      iqa train synth/ --method graphiqa-pretrain --name gpre --steps 500 --nepoch 10   # iqa distort output
      iqa train koniq/ --method graphiqa --init checkpoints/gpre/latest.pth --name gft --seed 0
    """
    from ..errors import InvalidInputError

    if method in GRAPHIQA_METHODS:
        from ..datasets.formats import parse_format_options
        from ..training import GraphIQATrainConfig

        if store is None:
            raise InvalidInputError(f"--method {method} trains on a database folder: give DB (KADID-10k, the output "
                                    f"of 'iqa distort', or any database eval-db reads)")
        if bapps is not None or datasets or val_datasets:
            raise InvalidInputError(f"--bapps, --datasets and --val-datasets are for --method bapps, not {method}")
        config = GraphIQATrainConfig(
            name=name, method=method, database=str(store), db_format=db_format,
            db_options=parse_format_options(db_options), checkpoints_dir=str(checkpoints_dir),
            init=str(init) if init is not None else None, embed_size=embed_size, crop_size=crop_size, crops=crops,
            batch_size=32 if batch_size is None else batch_size, steps=steps, nepoch=nepoch,
            nepoch_decay=0 if nepoch_decay is None else nepoch_decay, lr=lr, split=split, val_fraction=val_fraction,
            eval_triplets=eval_triplets, testset_freq=1 if testset_freq is None else testset_freq, seed=seed,
            device=device,
            backbone_weights=str(backbone_weights) if backbone_weights else None,
            cache=str(cache) if cache is not None else None, short_side=short_side,
            eval_batch_size=8 if eval_batch_size is None else eval_batch_size, num_workers=workers, resume=resume)
        _run(config, name, checkpoints_dir, as_json)
        return
    graphiqa_only = [flag for flag, given in (("--init", init), ("--embed-size", embed_size), ("--cache", cache),
                                              ("--short-side", short_side), ("--db-option", db_options),
                                              ("--format", db_format != "auto")) if given]
    if graphiqa_only:
        raise InvalidInputError(f"{', '.join(graphiqa_only)}: for --method graphiqa-pretrain or graphiqa")
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
        batch_size=50 if batch_size is None else batch_size, nepoch=5 if nepoch is None else nepoch,
        nepoch_decay=5 if nepoch_decay is None else nepoch_decay, lr=1e-4 if lr is None else lr,
        testset_freq=2 if testset_freq is None else testset_freq,
        split=split, train_csv=str(train_csv) if train_csv else None, test_csv=str(test_csv) if test_csv else None,
        seed=seed, device=device, train_trunk=train_trunk, from_scratch=from_scratch,
        backbone_weights=str(backbone_weights) if backbone_weights else None,
        eval_batch_size=256 if eval_batch_size is None else eval_batch_size, num_workers=workers, bapps_limit=limit,
        resume=resume)
    _run(config, name, checkpoints_dir, as_json)


def _run(config, name: str, checkpoints_dir: Path, as_json: bool) -> None:
    """Train with a progress bar; Ctrl-C says where the run can resume; print the result."""
    from ..training import train as run_training

    reporter = _Reporter()
    try:
        with reporter:
            result = run_training(config, progress=reporter)
    except KeyboardInterrupt:
        run_dir = Path(checkpoints_dir) / name
        done = reporter.last_epoch
        where = (f"{run_dir / 'latest.pth'} holds epoch {done}; continue with --resume" if done is not None
                 else "no epoch completed")
        err_console.print(f"[bold red]interrupted[/]: {where}")
        raise typer.Exit(130) from None

    if as_json:
        emit_json(result.to_dict())
        return
    _print_summary(result)


class _Reporter:
    """Progress callback: a bar (stimuli/s or triplets/s, loss) and one log line per epoch on stderr."""

    def __init__(self):
        self.stack = contextlib.ExitStack()
        self.advance = None
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
            err_console.print(_epoch_line(event.row, event.total_epochs))


def _num(value, fmt: str = ".4f") -> str:
    return "-" if value is None or value != value else format(value, fmt)


def _epoch_line(row: dict, total: int) -> str:
    parts = [f"epoch {row['epoch']}/{total}"]
    if row.get("lr") is not None:
        parts.append(f"lr {row['lr']:.3g}")
    if row.get("train_loss") is not None:
        parts.append(f"train loss {row['train_loss']:.4g}")
    if row.get("test_loss") is not None and row.get("test_triplet_acc") is None:
        parts.append(f"test loss {row['test_loss']:.4g}  RMSE {_num(row.get('test_rmse'))}  "
                     f"SROCC {_num(row.get('test_srocc'))}  PLCC {_num(row.get('test_plcc'))}")
    if row.get("train_2afc") is not None:
        parts.append(f"train 2AFC {_num(row.get('train_2afc'))}")
    if row.get("val_2afc") is not None:
        parts.append(f"val 2AFC {_num(row.get('val_2afc'))}")
    if row.get("train_triplet") is not None:
        parts.append(f"triplet {row['train_triplet']:.4g}  level MSE {_num(row.get('train_level_mse'), '.4g')}")
    if row.get("test_triplet_acc") is not None:
        parts.append(f"held-out loss {_num(row.get('test_loss'), '.4g')}  triplet acc "
                     f"{_num(row.get('test_triplet_acc'), '.3f')}  level SROCC {_num(row.get('test_level_srocc'))}")
    if row.get("val_srocc") is not None:
        parts.append(f"val SROCC {_num(row.get('val_srocc'))}  PLCC {_num(row.get('val_plcc'))}  test SROCC "
                     f"{_num(row.get('test_srocc'))}  PLCC {_num(row.get('test_plcc'))}")
    if row.get("units_per_s") is not None:
        parts.append(f"({row['units_per_s']:.1f}/s)")
    return "  ".join(parts)


def _print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    if result.mode in GRAPHIQA_METHODS:
        _print_graphiqa_summary(result)
        return
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


def _print_graphiqa_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    k = result.model.embed_size if result.model is not None else result.config.get("embed_size")
    table = Table(title=f"iqa train {result.name} ({result.mode}, K={k})")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("epochs", f"{result.epochs_completed}/{result.total_epochs}"
                  + (f" (resumed from {result.resumed_from})" if result.resumed_from is not None else "")
                  + (" (stopped early)" if result.stopped_early else ""))
    final, best = result.final, result.best
    if result.mode == "graphiqa-pretrain":
        table.add_row("images train / held out", f"{result.n_train} / {result.n_test}")
        table.add_row("held-out triplet accuracy", _num(final.get("test_triplet_acc")))
        table.add_row("held-out level SROCC", _num(final.get("test_level_srocc")))
    else:
        import json

        counts = json.loads((result.run_dir / "split.json").read_text())["counts"]
        table.add_row("images train / val / test", f"{counts['train']} / {counts['val']} / {counts['test']}")
        table.add_row("best epoch (validation SROCC)", f"{best.get('epoch', '-')}")
        for key, label in (("val_srocc", "val SROCC"), ("test_srocc", "test SROCC"), ("test_plcc", "test PLCC")):
            table.add_row(f"{label} at the best epoch", _num(best.get(key)))
        table.add_row("best checkpoint", str(result.best_checkpoint))
    table.add_row("checkpoint", str(result.checkpoint))
    table.add_row("split", str(result.run_dir / "split.json"))
    table.add_row("metrics", str(result.metrics_csv))
    table.add_row("time", f"{result.seconds:.1f} s")
    Console().print(table)
