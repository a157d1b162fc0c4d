"""`iqa train --method asna | sorter`: the train command's options turned into an ASNA or sorter run
(training/asna.py, training/sorter.py), its progress lines and its summary. Part of cli/train.py's
command, kept apart because the options each family takes differ."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import emit_json, err_console
from .train import epochs_text, fmt_number
from .train_methods import config_values

RENAMES = {"nepoch": "epochs", "testset_freq": "eval_every", "split": "train_fraction", "db_format": "format",
           "vectors": "n_vectors"}


def asna_config(ctx: typer.Context, v: dict):
    from ..errors import InvalidInputError
    from ..training.asna import AsnaTrainConfig

    if v["store"] is None:
        raise InvalidInputError("--method asna trains on a full-reference database: give its folder, e.g. iqa train "
                                "--method asna tid2013/ --name asna_tid")
    values = config_values(ctx, v, "asna", RENAMES)
    values["use_cache"] = not values.pop("no_cache", False)
    return AsnaTrainConfig(database=str(v["store"]), **values)


def sorter_config(ctx: typer.Context, v: dict):
    from ..errors import InvalidInputError
    from ..training.sorter import SorterTrainConfig

    if v["store"] is not None:
        raise InvalidInputError(f"--method sorter trains on random vectors, not on {v['store']}: drop it")
    return SorterTrainConfig(**config_values(ctx, v, "sorter", RENAMES))


def train_asna_command(ctx: typer.Context, v: dict, method: str) -> None:
    """`iqa train --method asna|sorter`, from the train command's parameter values."""
    from .train import run_reported

    run_dir = Path(v["checkpoints_dir"]) / v["name"]
    if method == "asna":
        from ..training.asna import train_asna

        cfg = asna_config(ctx, v)
        result = run_reported(lambda progress: train_asna(cfg, progress), run_dir, asna_epoch_line)
    else:
        from ..training.sorter import train_sorter_run

        cfg = sorter_config(ctx, v)
        result = run_reported(lambda progress: train_sorter_run(cfg, progress), run_dir, sorter_epoch_line)
    if v["as_json"]:
        emit_json(result.to_dict())
    elif method == "asna":
        _print_asna(result)
    else:
        _print_sorter(result)


def asna_epoch_line(row: dict, total: int) -> str:
    from .train import epoch_line_start

    parts = epoch_line_start(row, total)
    if row.get("val_srocc") is not None:
        parts.append(f"val SROCC {fmt_number(row['val_srocc'])}")
    if row.get("test_srocc") is not None:
        parts.append(f"test SROCC {fmt_number(row['test_srocc'])}  PLCC {fmt_number(row.get('test_plcc'))}")
    if row.get("units_per_s") is not None:
        parts.append(f"({row['units_per_s']:.1f} pairs/s)")
    return "  ".join(parts)


def sorter_epoch_line(row: dict, total: int) -> str:
    from .train import epoch_line_start

    parts = epoch_line_start(row, total)
    if row.get("rank_error") is not None:
        parts.append(f"rank error {fmt_number(row['rank_error'])}  Spearman gap {fmt_number(row.get('spearman_gap'))} "
                     f"(max {fmt_number(row.get('spearman_gap_max'))})")
    if row.get("units_per_s") is not None:
        parts.append(f"({row['units_per_s']:.0f} vectors/s)")
    return "  ".join(parts)


def _print_asna(result) -> None:
    from rich.console import Console
    from rich.table import Table

    run, cfg = result.run, result.run.config
    table = Table(title=f"iqa train {run.name} (asna, {cfg['preset'] or cfg['variant'] or 'simple'} preset, variant "
                        f"{cfg['variant'] or 'of the preset'})")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("epochs", epochs_text(run))
    table.add_row("pairs train / val / test", f"{run.n_train} / {result.n_val} / {run.n_test}")
    table.add_row("best epoch", f"{result.best_epoch}" + (" (validation SROCC)" if result.n_val else " (the last)"))
    for key, label in (("val_srocc", "validation SROCC"), ("test_srocc", "test SROCC"), ("test_plcc", "test PLCC"),
                       ("test_rmse", "test RMSE (standardised)")):
        table.add_row(f"{label} at the best epoch", fmt_number(result.best.get(key)))
    table.add_row("best checkpoint", str(result.best_checkpoint))
    table.add_row("split", str(result.split_file))
    table.add_row("metrics", str(run.metrics_csv))
    table.add_row("curves", str(run.curves_png))
    table.add_row("time", f"{run.seconds:.1f} s")
    Console().print(table)
    err_console.print(f"score with: iqa eval-db DB --metric asna --checkpoint {result.best_checkpoint}")


def _print_sorter(result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"iqa train {result.name} (sorter, {result.config['preset']} preset)")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("epochs", epochs_text(result))
    table.add_row("training vectors", str(result.n_train))
    table.add_row("mean |rank error| (fresh vectors)", fmt_number(result.final.get("rank_error")))
    table.add_row("Spearman gap, mean / max (fresh pairs)",
                  " / ".join(fmt_number(result.final.get(k)) for k in ("spearman_gap", "spearman_gap_max")))
    table.add_row("checkpoint", str(result.checkpoint))
    table.add_row("metrics", str(result.metrics_csv))
    table.add_row("time", f"{result.seconds:.1f} s")
    Console().print(table)
    err_console.print(f"use with: iqa train --method asna DB --ranker sorter --sorter {result.checkpoint}")
