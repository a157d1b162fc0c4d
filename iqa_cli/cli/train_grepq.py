"""The GRepQ side of `iqa train`: --method grepq-low | grepq-high | grepq-ridge.

The options live on the one `iqa train` command (under their own help panel); this module says
which apply to which method, fills the method's defaults for the shared ones the user did not give
(--batch-size, --nepoch, --lr, --split, --seed), calls the library and renders the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import typer

from .common import emit_json, err_console, progress_bar

METHODS = ("grepq-low", "grepq-high", "grepq-ridge")
PANEL = "GRepQ (--method grepq-low | grepq-high | grepq-ridge)"

FormatOpt = typer.Option("auto", "--format", rich_help_panel=PANEL, help="grepq-low, grepq-ridge: the database "
                         "format (kadid10k for iqa distort output, tid2013, live, koniq10k, ... or auto).")
DbOptionOpt = typer.Option([], "--db-option", metavar="NAME=VALUE", rich_help_panel=PANEL,
                           help="grepq-low, grepq-ridge: a reader option, e.g. dmos=original (LIVE); repeatable.")
VersionsOpt = typer.Option(None, "--versions", min=2, rich_help_panel=PANEL, show_default="9",
                           help="grepq-low: images per content, the reference + VERSIONS-1 distorted ones drawn "
                           "from the seed.")
FragmentGridOpt = typer.Option(None, "--fragment-grid", min=1, rich_help_panel=PANEL, show_default="7",
                               help="grepq-low: fragment views of GRID x GRID pieces.")
FragmentPieceOpt = typer.Option(None, "--fragment-piece", min=1, rich_help_panel=PANEL, show_default="32",
                                help="grepq-low: piece size in pixels (7 x 32 = 224x224 views).")
WeightDecayOpt = typer.Option(None, "--weight-decay", min=0.0, rich_help_panel=PANEL, show_default="0.05",
                              help="grepq-low: AdamW weight decay.")
GroupSizeOpt = typer.Option(None, "--group-size", min=2, rich_help_panel=PANEL, show_default="8",
                            help="grepq-high: G, the size of the low and high pseudo-label groups.")
CropOpt = typer.Option(None, "--crop", min=32, rich_help_panel=PANEL, show_default="224",
                       help="grepq-high: shorter side resized to CROP, then a centre CROP x CROP crop.")
LowLevelWeightsOpt = typer.Option(None, "--low-level-weights", rich_help_panel=PANEL, help="grepq-ridge: the "
                                  "low-level encoder (the authors' .tar or a grepq-low checkpoint).")
ClipWeightsOpt = typer.Option(None, "--clip-weights", rich_help_panel=PANEL, help="grepq-high: the local CLIP RN50 "
                              "file to fine-tune (required); grepq-ridge: adds the 1024-d CLIP features.")
ClipVisualWeightsOpt = typer.Option(None, "--clip-visual-weights", rich_help_panel=PANEL, help="grepq-ridge: a "
                                    "fine-tuned image tower replacing the one of --clip-weights.")
CacheOpt = typer.Option(None, "--cache", rich_help_panel=PANEL, help="grepq-low, grepq-ridge: HDF5 image cache to "
                        "use or build (default: under $IQA_CACHE_DIR, else ~/.cache/iqa).")
NoCacheOpt = typer.Option(False, "--no-cache", rich_help_panel=PANEL,
                          help="grepq-low, grepq-ridge: decode the image files instead of caching them.")
FsimCacheOpt = typer.Option(None, "--fsim-cache", rich_help_panel=PANEL, help="grepq-low: HDF5 cache of the FSIM "
                            "matrices (default: under $IQA_CACHE_DIR, else ~/.cache/iqa).")
FeatureCacheOpt = typer.Option(None, "--feature-cache", rich_help_panel=PANEL, help="grepq-ridge: HDF5 cache of the "
                               "features (default: under $IQA_CACHE_DIR, else ~/.cache/iqa).")
RepeatsOpt = typer.Option(None, "--repeats", min=1, rich_help_panel=PANEL, show_default="10",
                          help="grepq-ridge: random train/test splits (databases with an official split use it).")
FoldsOpt = typer.Option(None, "--folds", min=2, rich_help_panel=PANEL, show_default="5",
                        help="grepq-ridge: cross-validation folds choosing alpha on each training part.")
ShortSideOpt = typer.Option(None, "--short-side", min=0, rich_help_panel=PANEL, show_default="the database's",
                            help="grepq-ridge: resize each image's shorter side first (0: full size).")

_COMMON = {"store", "name", "method", "checkpoints_dir", "seed", "device", "workers", "as_json", "batch_size"}
APPLIES: dict[str, set[str]] = {
    "grepq-low": _COMMON | {"nepoch", "lr", "split", "resume", "db_format", "db_options", "versions", "fragment_grid",
                            "fragment_piece", "weight_decay", "cache", "no_cache", "fsim_cache"},
    "grepq-high": _COMMON | {"nepoch", "lr", "resume", "group_size", "crop", "clip_weights"},
    "grepq-ridge": _COMMON | {"split", "db_format", "db_options", "low_level_weights", "clip_weights",
                              "clip_visual_weights", "cache", "no_cache", "feature_cache", "repeats", "folds",
                              "short_side"},
}
GREPQ_ONLY = set().union(*APPLIES.values()) - _COMMON - {"nepoch", "lr", "split", "resume"}


def _given(ctx: typer.Context, name: str) -> bool:
    from typer._click.core import ParameterSource

    source = ctx.get_parameter_source(name)
    return source is not None and source is not ParameterSource.DEFAULT


def _flag(ctx: typer.Context, name: str) -> str:
    for param in ctx.command.params:
        if param.name == name:
            return param.opts[0] if param.opts else name
    return name


def refuse_grepq_options(ctx: typer.Context) -> None:
    """The LPIPS methods take none of the GRepQ options."""
    from ..errors import InvalidInputError

    for name in sorted(GREPQ_ONLY):
        if _given(ctx, name):
            raise InvalidInputError(f"{_flag(ctx, name)} applies to the grepq methods (--method grepq-low | grepq-high "
                                    "| grepq-ridge), not to LPIPS training")


def _value(ctx: typer.Context, name: str, default: Any) -> Any:
    """The option's value when the user gave it, else the method's default."""
    return ctx.params[name] if _given(ctx, name) else default


def train_grepq(ctx: typer.Context, method: str, run_reported: Callable) -> None:
    """Validate the options for ``method``, run it, print the result."""
    from ..errors import InvalidInputError

    params = ctx.params
    for name in params:
        if _given(ctx, name) and name not in APPLIES[method]:
            raise InvalidInputError(f"{_flag(ctx, name)} does not apply to --method {method} (see docs/grepq.md)")
    if params["store"] is None:
        what = "the folder of pristine images" if method == "grepq-high" else "the database folder"
        raise InvalidInputError(f"--method {method} needs {what} as its argument: iqa train FOLDER --method {method}")
    common = dict(name=params["name"], root=str(params["store"]), checkpoints_dir=str(params["checkpoints_dir"]),
                  device=params["device"], num_workers=params["workers"])
    as_json = params["as_json"]
    run_dir = Path(params["checkpoints_dir"]) / params["name"]
    if method == "grepq-ridge":
        from ..grepq_ridge import GRepQRidgeConfig, fit_grepq_ridge

        cfg = GRepQRidgeConfig(
            **{k: v for k, v in common.items()}, format=params["db_format"], db_options=_db_options(params),
            low_level_weights=_path(params["low_level_weights"]), clip_weights=_path(params["clip_weights"]),
            clip_visual_weights=_path(params["clip_visual_weights"]), seed=_value(ctx, "seed", 0),
            batch_size=_value(ctx, "batch_size", 8), repeats=params["repeats"] or 10,
            train_fraction=_value(ctx, "split", None) or 0.8, folds=params["folds"] or 5,
            cache=_path(params["cache"]), no_cache=params["no_cache"], feature_cache=_path(params["feature_cache"]),
            short_side=params["short_side"])
        report = fit_grepq_ridge(cfg, stages=progress_bar)
        if as_json:
            emit_json(report.to_dict())
        else:
            _print_ridge(report)
        return
    if method == "grepq-low":
        from ..training.grepq_low import GRepQLowConfig, train_grepq_low

        defaults = GRepQLowConfig(name="-", root="-")
        cfg = GRepQLowConfig(
            **common, format=params["db_format"], db_options=_db_options(params),
            versions=params["versions"] or defaults.versions, batch_size=_value(ctx, "batch_size", defaults.batch_size),
            epochs=_value(ctx, "nepoch", defaults.epochs), lr=_value(ctx, "lr", defaults.lr),
            weight_decay=defaults.weight_decay if params["weight_decay"] is None else params["weight_decay"],
            fragment_grid=params["fragment_grid"] or defaults.fragment_grid,
            fragment_piece=params["fragment_piece"] or defaults.fragment_piece, split=params["split"],
            seed=params["seed"], cache=_path(params["cache"]), no_cache=params["no_cache"],
            fsim_cache=_path(params["fsim_cache"]), resume=params["resume"])
        result = run_reported(lambda progress: train_grepq_low(cfg, progress, stages=progress_bar), run_dir)
    else:
        from ..training.grepq_high import GRepQHighConfig, train_grepq_high

        defaults = GRepQHighConfig(name="-", root="-")
        cfg = GRepQHighConfig(
            **common, clip_weights=_path(params["clip_weights"]),
            batch_size=_value(ctx, "batch_size", defaults.batch_size), epochs=_value(ctx, "nepoch", defaults.epochs),
            lr=_value(ctx, "lr", defaults.lr), group_size=params["group_size"] or defaults.group_size,
            crop=params["crop"] or defaults.crop, seed=params["seed"], resume=params["resume"])
        result = run_reported(lambda progress: train_grepq_high(cfg, progress, stages=progress_bar), run_dir)
    if as_json:
        emit_json(result.to_dict())
    else:
        _print_training(result)


def _path(value) -> str | None:
    return None if value is None else str(value)


def _db_options(params: dict) -> dict[str, str]:
    from ..datasets.formats import parse_format_options

    return parse_format_options(params["db_options"] or [])


def _num(value, fmt: str = ".4f") -> str:
    return "-" if value is None or value != value else format(value, fmt)


def _print_training(result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"iqa train {result.name} ({result.mode})")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("epochs", f"{result.epochs_completed}/{result.total_epochs}"
                  + (f" (resumed from {result.resumed_from})" if result.resumed_from is not None else "")
                  + (" (stopped early)" if result.stopped_early else ""))
    unit = "contents" if result.mode == "grepq-low" else "images"
    table.add_row(f"training {unit}" + (" / held out" if result.n_test else ""),
                  f"{result.n_train}" + (f" / {result.n_test}" if result.n_test else ""))
    last = result.history[-1] if result.history else {}
    table.add_row("last train loss", _num(last.get("train_loss")))
    if result.final.get("val_loss") is not None:
        table.add_row("held-out loss", _num(result.final.get("val_loss")))
    table.add_row("checkpoint", str(result.checkpoint))
    use = ("--low-level-weights" if result.mode == "grepq-low" else "--clip-weights or --clip-visual-weights")
    table.add_row("use it as", f"grepq {use}")
    table.add_row("metrics", str(result.metrics_csv))
    table.add_row("curves", str(result.curves_png))
    table.add_row("time", f"{result.seconds:.1f} s")
    Console().print(table)


def _print_ridge(report) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (f"GRepQ ridge on {report.database} ({report.n_scored} scored images, {report.mode}, {report.dim}-d; "
             f"protocol: {report.protocol})")
    table = Table(title=title)
    for column in ("split", "train", "test", "alpha", "SROCC", "PLCC", "KROCC", "RMSE"):
        table.add_column(column, justify="right")
    for s in report.splits:
        table.add_row(str(s.repeat), str(s.n_train), str(s.n_test), f"{s.alpha:g}", _num(s.srocc), _num(s.plcc),
                      _num(s.krocc), _num(s.rmse, ".4g"))
    table.add_row("median", "", "", "", _num(report.median_srocc), _num(report.median_plcc), "", "", style="bold")
    console = Console()
    console.print(table)
    cached = "read from the cache" if report.features_cached else "computed and cached"
    console.print(f"features: {cached} ({report.feature_cache})")
    console.print(f"model (alpha {report.alpha:g}, all scored images): {report.model_path}; per-split rows: "
                  f"{report.splits_csv}")
    for note in report.notes:
        err_console.print(f"[bold yellow]note:[/] {note}")
