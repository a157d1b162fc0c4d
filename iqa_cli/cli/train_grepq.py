"""The GRepQ side of `iqa train`: --method grepq-low | grepq-high | grepq-ridge.

The options live on the one `iqa train` command (train_methods.py says which each method takes);
this module turns the ones given into the method's config (whose defaults fill the rest), calls the
library and renders the result.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .common import emit_json, err_console, progress_bar
from .train import epochs_text, fmt_number
from .train_methods import config_values


def train_grepq_command(ctx: typer.Context, v: dict, method: str) -> None:
    """Run ``method`` with the options given (the config's defaults for the others), print the result."""
    from ..errors import InvalidInputError
    from .train import run_reported

    if v["store"] is None:
        what = "the folder of pristine images" if method == "grepq-high" else "the database folder"
        raise InvalidInputError(f"--method {method} needs {what} as its argument: iqa train FOLDER --method {method}")
    values = config_values(ctx, v, method, {"db_format": "format", "nepoch": "epochs", "split": "train_fraction"
                                         if method == "grepq-ridge" else "split"})
    values["root"] = str(v["store"])
    run_dir = Path(v["checkpoints_dir"]) / v["name"]
    if method == "grepq-ridge":
        from ..grepq_ridge import GRepQRidgeConfig, fit_grepq_ridge

        if values.get("seed") is None:
            values.pop("seed", None)  # the ridge model's seeded splits (0) unless --seed
        report = fit_grepq_ridge(GRepQRidgeConfig(**values), stages=progress_bar)
        if v["as_json"]:
            emit_json(report.to_dict())
        else:
            _print_ridge(report)
        return
    if method == "grepq-low":
        from ..training.grepq_low import GRepQLowConfig, train_grepq_low

        cfg = GRepQLowConfig(**values)
        result = run_reported(lambda progress: train_grepq_low(cfg, progress, stages=progress_bar), run_dir)
    else:
        from ..training.grepq_high import GRepQHighConfig, train_grepq_high

        cfg = GRepQHighConfig(**values)
        result = run_reported(lambda progress: train_grepq_high(cfg, progress, stages=progress_bar), run_dir)
    if v["as_json"]:
        emit_json(result.to_dict())
    else:
        _print_training(result)


def _print_training(result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"iqa train {result.name} ({result.mode})")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("epochs", epochs_text(result))
    unit = "contents" if result.mode == "grepq-low" else "images"
    table.add_row(f"training {unit}" + (" / held out" if result.n_test else ""),
                  f"{result.n_train}" + (f" / {result.n_test}" if result.n_test else ""))
    last = result.history[-1] if result.history else {}
    table.add_row("last train loss", fmt_number(last.get("train_loss")))
    if result.final.get("val_loss") is not None:
        table.add_row("held-out loss", fmt_number(result.final.get("val_loss")))
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
        table.add_row(str(s.repeat), str(s.n_train), str(s.n_test), f"{s.alpha:g}", fmt_number(s.srocc),
                      fmt_number(s.plcc), fmt_number(s.krocc), fmt_number(s.rmse, ".4g"))
    table.add_row("median", "", "", "", fmt_number(report.median_srocc), fmt_number(report.median_plcc), "", "",
                  style="bold")
    console = Console()
    console.print(table)
    cached = "read from the cache" if report.features_cached else "computed and cached"
    console.print(f"features: {cached} ({report.feature_cache})")
    console.print(f"model (alpha {report.alpha:g}, all scored images): {report.model_path}; per-split rows: "
                  f"{report.splits_csv}")
    for note in report.notes:
        err_console.print(f"[bold yellow]note:[/] {note}")
