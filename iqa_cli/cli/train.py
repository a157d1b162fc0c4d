"""`iqa train`: one command for every training recipe. This module holds the command's options, the
LPIPS recipes (Graphics-LPIPS heads from MOS, LPIPS heads from BAPPS) and the progress reporting
all recipes share; the other families turn the options into their configs in train_graphiqa.py,
train_grepq.py and train_asna.py, and train_methods.py says which option each method takes."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional

import typer

from .common import (BackboneWeightsOpt, DeviceOpt, JsonOpt, MultiValueOptionsCommand, emit_json, err_console,
                     progress_bar)
from .train_methods import METHODS, check_options, resolve_method


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


_METHOD_HELP = ("Training recipe. " + "; ".join(f"{name}: {what}" for name, what in METHODS.items())
                + ". Default: bapps with --bapps, else mos. Each method takes only its own options.")


def train(
    ctx: typer.Context,
    store: Optional[Path] = typer.Argument(None, help="What to train on: mos, a patch store with MOS (iqa patchify); "
                                           "graphiqa*, grepq-low, grepq-ridge, asna, a database folder (any eval-db "
                                           "reads; iqa distort output for graphiqa-pretrain and grepq-low); "
                                           "grepq-high, a folder of pristine images. Leave out with --bapps and "
                                           "--method sorter.", show_default=False),
    name: str = typer.Option(..., "--name", help="Run name: files go to CHECKPOINTS_DIR/NAME/.", show_default=False),
    method: Optional[str] = typer.Option(None, "--method", help=_METHOD_HELP, show_default=False),
    checkpoints_dir: Path = typer.Option(Path("checkpoints"), "--checkpoints-dir", help="Where run folders go."),
    # -- shared by several methods (defaults shown are mos/bapps'; the others have their own) -----------
    nepoch: int = typer.Option(5, "--nepoch", min=0, help="Epochs at the base learning rate (graphiqa-pretrain 10, "
                               "graphiqa 50); asna, sorter, grepq: all epochs (asna 30, sorter 100, grepq-low 15, "
                               "grepq-high 10)."),
    nepoch_decay: int = typer.Option(5, "--nepoch_decay", "--nepoch-decay", min=0,
                                     help="Epochs of linear learning-rate decay after those (graphiqa methods 0)."),
    lr: float = typer.Option(1e-4, "--lr", callback=_in_range(0), help="Base learning rate (Adam, beta1 0.5 for mos "
                             "and bapps; graphiqa-pretrain 1e-5, graphiqa 5e-6, grepq-high 1e-5, sorter 1e-3)."),
    testset_freq: int = typer.Option(2, "--testset_freq", "--testset-freq", min=1,
                                     help="Evaluate on the test set every this many epochs (and after the last; "
                                     "other methods 1)."),
    batch_size: int = typer.Option(50, "--batch-size", min=1, help="bapps: triplets per optimiser step; "
                                   "graphiqa-pretrain: crops per graph (32); graphiqa: images per step (32); asna: "
                                   "pairs (16); sorter: vectors (1024); grepq-low: contents (8); grepq-high: "
                                   "images (128); grepq-ridge: images per feature batch (8)."),
    eval_batch_size: int = typer.Option(256, "--eval-batch-size", min=1,
                                        help="Patch pairs per forward pass when scoring the test set (graphiqa: "
                                        "images per scoring work item, 8; asna: image pairs, 16)."),
    split: Optional[float] = typer.Option(None, "--split", callback=_in_range(0, 1),
                                          help="Training fraction. mos: a random by-stimulus split (default: the "
                                          "store's split column when it labels every stimulus, else 0.8); database "
                                          "methods: by the database's protocol (contents of synthetic databases; an "
                                          "official split is used when there is one), default 0.8 "
                                          "(graphiqa-pretrain 0.9).", show_default=False),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, callback=_seed_fits_torch,
                                       help="Seed of the split, sampling, init and dropout (default: random, "
                                       "recorded in the checkpoint; grepq-ridge 0).", show_default=False),
    device: str = DeviceOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue the run NAME from its latest.pth."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0,
                                          help="DataLoader worker processes (default: by device).",
                                          show_default=False),
    backbone_weights: Optional[Path] = BackboneWeightsOpt,
    rank_weight: float = typer.Option(1.0, "--rank-weight", callback=_in_range(0, low_inclusive=True),
                                      help="Weight of the rank term in mse+rank (asna: s, default 0.1)."),
    rank_temperature: float = typer.Option(0.1, "--rank-temperature", callback=_in_range(0),
                                           help="Soft-rank temperature, in units of the batch's score std."),
    db_format: str = typer.Option("auto", "--format", help="Database methods: the database format (kadid10k for iqa "
                                  "distort output, tid2013, pipal, koniq10k, csv, ... or auto), as in eval-db."),
    db_options: List[str] = typer.Option([], "--db-option", metavar="NAME=VALUE", help="Database methods: a reader "
                                         "option, e.g. dmos=original (LIVE), as in eval-db; repeatable."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Database methods: the HDF5 image cache to use or "
                                         "build (default: eval-db's, under $IQA_CACHE_DIR or ~/.cache/iqa).",
                                         show_default=False),
    no_cache: bool = typer.Option(False, "--no-cache", help="grepq-low, grepq-ridge, asna: decode the image files "
                                  "instead of caching them."),
    short_side: Optional[int] = typer.Option(None, "--short-side", min=0, show_default="the database's",
                                             help="graphiqa methods, grepq-ridge: resize each image's shorter side "
                                             "first (0: full size)."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", callback=_in_range(0, 1, low_inclusive=True),
                                                 show_default="0.1", help="graphiqa, asna: fraction of the training "
                                                 "part held out to pick the best epoch (best.pth); the test part "
                                                 "never picks (asna: 0 for none)."),
    as_json: bool = JsonOpt,
    # -- mos and bapps ----------------------------------------------------------------------------------
    n_input_img: int = typer.Option(4, "--nInputImg", "--n-input-img", min=1,
                                    help="mos: stimuli per optimiser step (whole stimuli)."),
    npatches: int = typer.Option(150, "--npatches", min=1, help="mos: patches each stimulus contributes per epoch."),
    net: str = typer.Option("alex", "--net", help="Backbone: alex | vgg | squeeze."),
    head: Optional[str] = typer.Option(None, "--head", help="graphics (MLP heads) | lpips (linear heads). "
                                       "Default: graphics for a store, lpips for --bapps.", show_default=False),
    version: str = typer.Option("0.1", "--version", help="LPIPS input scaling: 0.1 or 0.0."),
    loss: str = typer.Option("mse", "--loss", help="mos: mse | rank (1 - soft-rank Spearman) | mse+rank."),
    train_csv: Optional[Path] = typer.Option(None, "--train-csv", help="mos: CSV with a 'stimulus' column: the "
                                             "training stimuli (alone: the rest are tested).", show_default=False),
    test_csv: Optional[Path] = typer.Option(None, "--test-csv", help="mos: CSV with a 'stimulus' column: the test "
                                            "stimuli (alone: the rest are trained on).", show_default=False),
    train_trunk: bool = typer.Option(False, "--train-trunk", help="Train the backbone too (default: frozen)."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Start from random backbone weights."),
    bapps: Optional[Path] = typer.Option(None, "--bapps", help="Train LPIPS heads on this BAPPS 'dataset' folder "
                                         "(2AFC, Dist2Logit + BCE) instead of a store.", show_default=False),
    datasets: Optional[List[str]] = typer.Option(None, "--datasets", help="BAPPS training subsets (several after "
                                                 "one flag; default train/traditional train/cnn train/mix).",
                                                 show_default=False),
    val_datasets: Optional[List[str]] = typer.Option(None, "--val-datasets", help="BAPPS subsets evaluated every "
                                                     "--testset_freq epochs (default: every val/* subset present).",
                                                     show_default=False),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="BAPPS: only the first N triplets of each subset.",
                                        show_default=False),
    # -- graphiqa-pretrain and graphiqa (docs/graphiqa.md) -------------------------------------------------
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
    eval_triplets: int = typer.Option(20, "--eval-triplets", min=1,
                                      help="graphiqa-pretrain: held-out triplets scored at each evaluation."),
    # -- grepq-low, grepq-high, grepq-ridge (docs/grepq.md) -----------------------------------------------
    versions: int = typer.Option(9, "--versions", min=2, help="grepq-low: images per content, the reference + "
                                 "VERSIONS-1 distorted ones drawn from the seed."),
    fragment_grid: int = typer.Option(7, "--fragment-grid", min=1, help="grepq-low: fragment views of GRID x GRID "
                                      "pieces."),
    fragment_piece: int = typer.Option(32, "--fragment-piece", min=1, help="grepq-low: piece size in pixels (7 x 32 "
                                       "= 224x224 views)."),
    weight_decay: float = typer.Option(0.05, "--weight-decay", min=0.0, help="grepq-low: AdamW weight decay."),
    fsim_cache: Optional[Path] = typer.Option(None, "--fsim-cache", help="grepq-low: HDF5 cache of the FSIM matrices "
                                              "(default: under $IQA_CACHE_DIR, else ~/.cache/iqa).",
                                              show_default=False),
    group_size: int = typer.Option(8, "--group-size", min=2, help="grepq-high: G, the size of the low and high "
                                   "pseudo-label groups."),
    crop: int = typer.Option(224, "--crop", min=32, help="grepq-high: shorter side resized to CROP, then a centre "
                             "CROP x CROP crop."),
    low_level_weights: Optional[Path] = typer.Option(None, "--low-level-weights", help="grepq-ridge: the low-level "
                                                     "encoder (the authors' .tar or a grepq-low checkpoint).",
                                                     show_default=False),
    clip_weights: Optional[Path] = typer.Option(None, "--clip-weights", help="grepq-high: the local CLIP RN50 file to "
                                                "fine-tune (required); grepq-ridge: adds the 1024-d CLIP features.",
                                                show_default=False),
    clip_visual_weights: Optional[Path] = typer.Option(None, "--clip-visual-weights", help="grepq-ridge: a "
                                                       "fine-tuned image tower replacing the one of --clip-weights.",
                                                       show_default=False),
    feature_cache: Optional[Path] = typer.Option(None, "--feature-cache", help="grepq-ridge: HDF5 cache of the "
                                                 "features (default: under $IQA_CACHE_DIR, else ~/.cache/iqa).",
                                                 show_default=False),
    repeats: int = typer.Option(10, "--repeats", min=1, help="grepq-ridge: random train/test splits (databases with "
                                "an official split use it)."),
    folds: int = typer.Option(5, "--folds", min=2, help="grepq-ridge: cross-validation folds choosing alpha on each "
                              "training part."),
    # -- asna and sorter (docs/asna.md) ----------------------------------------------------------------
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
) -> None:
    """Train a quality model: Graphics-LPIPS heads from MOS, LPIPS heads from BAPPS 2AFC, GraphIQA (pretraining, fine-tuning), GRepQ's encoders and ridge model, ASNA and its learned sorter.

    Writes CHECKPOINTS_DIR/NAME/: latest.pth (and best.pth where a validation part picks the best epoch), metrics.csv and curves.png; the checkpoints load with --checkpoint in score-pair, score-image, eval-db and the other scoring commands.

    Under torchrun: batch sizes count for the whole job; --seed gives one process's weights.

    \b
    Examples:
      iqa train db.h5 --name glpips --nInputImg 4 --npatches 150 --nepoch 5 \\
          --nepoch_decay 5
      iqa train db.h5 --name glpips_rank --loss mse+rank --split 0.8 --seed 1
      iqa train db.h5 --name glpips --resume                     # after Ctrl-C
      iqa train --bapps dataset/ --head lpips --name lpips_alex \\
          --datasets train/traditional train/cnn train/mix
      torchrun --nproc_per_node 4 -m iqa_cli train db.h5 --name glpips \\
          --seed 1                          # 4 GPUs, same result
      iqa train synth/ --method graphiqa-pretrain --name gpre --nepoch 10
      iqa train koniq/ --method graphiqa --init checkpoints/gpre/latest.pth \\
          --name gft --seed 0
      iqa train distorted/ --method grepq-low --name llm --versions 9
      iqa train photos/ --method grepq-high --name hlm --clip-weights RN50.pt
      iqa train kadid10k/ --method grepq-ridge --name ridge \\
          --low-level-weights llm.pth --clip-weights RN50.pt
      iqa train tid2013/ --method asna --name asna_tid --variant bn --seed 1
      iqa train --method sorter --name sorter16 --preset small --vectors 400000
    """
    values = {k: v for k, v in locals().items() if k != "ctx"}  # typer's converted values (ctx.params: click's)
    method = resolve_method(method, bapps)
    check_options(ctx, method)
    if method.startswith("graphiqa"):
        from .train_graphiqa import train_graphiqa_command

        train_graphiqa_command(ctx, values, method)
    elif method.startswith("grepq"):
        from .train_grepq import train_grepq_command

        train_grepq_command(ctx, values, method)
    elif method in ("asna", "sorter"):
        from .train_asna import train_asna_command

        train_asna_command(ctx, values, method)
    else:
        _train_lpips(values, method)


def _train_lpips(v: dict, method: str) -> None:
    """mos and bapps: the LPIPS-family recipes of training/__init__.train."""
    from ..errors import InvalidInputError
    from ..training import BAPPS_TRAIN_SETS, TrainConfig
    from ..training import train as run_training

    store, bapps = v["store"], v["bapps"]
    if bapps is not None and store is not None:
        raise InvalidInputError(f"give either a patch store ({store}) or --bapps {bapps}, not both")
    if bapps is None and store is None:
        raise InvalidInputError("nothing to train on: give a patch store STORE.h5 (from iqa patchify) or --bapps ROOT")
    if bapps is None and (v["datasets"] or v["val_datasets"]):
        raise InvalidInputError("--datasets and --val-datasets are for --bapps training")
    path = lambda key: str(v[key]) if v[key] is not None else None  # noqa: E731
    config = TrainConfig(
        name=v["name"], method=method, store=path("store"), bapps_root=path("bapps"),
        datasets=_split_values(v["datasets"]) or BAPPS_TRAIN_SETS, val_datasets=_split_values(v["val_datasets"]),
        checkpoints_dir=str(v["checkpoints_dir"]), net=v["net"], head=v["head"], version=v["version"],
        loss=v["loss"], rank_weight=v["rank_weight"], rank_temperature=v["rank_temperature"],
        n_input_img=v["n_input_img"], npatches=v["npatches"], batch_size=v["batch_size"], nepoch=v["nepoch"],
        nepoch_decay=v["nepoch_decay"], lr=v["lr"], testset_freq=v["testset_freq"], split=v["split"],
        train_csv=path("train_csv"), test_csv=path("test_csv"), seed=v["seed"], device=v["device"],
        train_trunk=v["train_trunk"], from_scratch=v["from_scratch"], backbone_weights=path("backbone_weights"),
        eval_batch_size=v["eval_batch_size"], num_workers=v["workers"], bapps_limit=v["limit"], resume=v["resume"])
    result = run_reported(lambda progress: run_training(config, progress=progress),
                          Path(v["checkpoints_dir"]) / v["name"])
    if v["as_json"]:
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


def epochs_text(run) -> str:
    """'3/10', with '(resumed from 2)' and '(stopped early)' where they apply: every summary's epochs row."""
    return (f"{run.epochs_completed}/{run.total_epochs}"
            + (f" (resumed from {run.resumed_from})" if run.resumed_from is not None else "")
            + (" (stopped early)" if run.stopped_early else ""))


def fmt_number(value, fmt: str = ".4f") -> str:
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
        parts.append(f"test loss {row['test_loss']:.4g}  RMSE {fmt_number(row.get('test_rmse'))}  "
                     f"SROCC {fmt_number(row.get('test_srocc'))}  PLCC {fmt_number(row.get('test_plcc'))}")
    if row.get("val_loss") is not None:
        parts.append(f"held-out loss {row['val_loss']:.4g}")
    if row.get("train_2afc") is not None:
        parts.append(f"train 2AFC {fmt_number(row.get('train_2afc'))}")
    if row.get("val_2afc") is not None:
        parts.append(f"val 2AFC {fmt_number(row.get('val_2afc'))}")
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
    table.add_row("epochs", epochs_text(result))
    if result.mode == "mos":
        table.add_row("stimuli train / test", f"{result.n_train} / {result.n_test}")
        for key, label in (("test_loss", "test loss"), ("test_rmse", "test RMSE (raw)"), ("test_srocc", "test SROCC"),
                           ("test_plcc", "test PLCC")):
            table.add_row(label, fmt_number(result.final.get(key)))
    else:
        table.add_row("training triplets", str(result.n_train))
        table.add_row("val 2AFC (mean)", fmt_number(result.final.get("val_2afc")))
        for key, value in result.final.items():
            if key.startswith("val_") and key != "val_2afc":
                table.add_row(f"  {key[4:]}", fmt_number(value))
    table.add_row("checkpoint", str(result.checkpoint))
    table.add_row("metrics", str(result.metrics_csv))
    table.add_row("curves", str(result.curves_png))
    table.add_row("time", f"{result.seconds:.1f} s")
    Console().print(table)
