"""`iqa train --method asna | sorter`: the train command's options turned into an ASNA or sorter run
(training/asna.py, training/sorter.py), its progress lines and its summary. Part of cli/train.py's
command, kept apart because the options each family takes differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .common import emit_json, err_console

# options (parameter names of cli/train.py's train) that only some recipes take
LPIPS_ONLY = ("n_input_img", "npatches", "nepoch_decay", "net", "head", "version", "loss", "train_csv", "test_csv",
              "train_trunk", "from_scratch", "backbone_weights", "bapps", "datasets", "val_datasets", "limit")
ASNA_ONLY = ("db_format", "db_options", "cache", "no_cache", "variant", "size", "mse_weight", "ranker",
             "target_ranks", "sorter", "val_fraction", "standardise", "train_crop", "eval_crop", "small", "augment")
SORTER_ONLY = ("vectors",)
STEP_DECAY = ("preset", "decay_every", "decay")  # asna and sorter
RANK_TERM = ("rank_weight", "rank_temperature", "split")  # mos and asna
NOT_TAKEN = {"asna": (*LPIPS_ONLY, *SORTER_ONLY), "sorter": (*LPIPS_ONLY, *ASNA_ONLY, *RANK_TERM),
             "lpips": (*ASNA_ONLY, *SORTER_ONLY, *STEP_DECAY)}
# defaults that differ from the LPIPS recipes' (used when the option is not given)
DEFAULTS = {"asna": {"batch_size": 16, "nepoch": 30, "lr": 1e-4, "decay_every": 10, "rank_weight": 0.1,
                     "testset_freq": 1, "eval_batch_size": 16},
            "sorter": {"batch_size": 1024, "nepoch": 100, "lr": 1e-3, "decay_every": 30, "testset_freq": 1}}


def _given(ctx: typer.Context, name: str) -> bool:
    from typer._click.core import ParameterSource

    return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def _option_name(ctx: typer.Context, name: str) -> str:
    for param in ctx.command.params:
        if param.name == name:
            return max(param.opts, key=len) if param.opts else name
    return name


def reject_family_options(ctx: typer.Context, method: str) -> None:
    """A usage error for an option the method does not take (e.g. --npatches with --method asna)."""
    family = method if method in NOT_TAKEN else "lpips"
    for name in NOT_TAKEN[family]:
        if _given(ctx, name):
            takers = [m for m, skipped in NOT_TAKEN.items() if name not in skipped]
            takers = ["mos/bapps" if m == "lpips" else m for m in takers]
            raise typer.BadParameter(f"{_option_name(ctx, name)} applies to --method {' and '.join(takers)}, not "
                                     f"{method}", ctx=ctx)


def _value(ctx: typer.Context, values: dict, method: str, name: str) -> Any:
    """The option's value, or the method's own default when it was not given."""
    if not _given(ctx, name) and name in DEFAULTS[method]:
        return DEFAULTS[method][name]
    return values[name]


def asna_config(ctx: typer.Context, v: dict):
    from ..datasets.formats import parse_format_options
    from ..errors import InvalidInputError
    from ..training.asna import AsnaTrainConfig

    if v["store"] is None:
        raise InvalidInputError("--method asna trains on a full-reference database: give its folder, e.g. iqa train "
                                "--method asna tid2013/ --name asna_tid")
    get = lambda name: _value(ctx, v, "asna", name)  # noqa: E731
    return AsnaTrainConfig(
        name=v["name"], database=str(v["store"]), format=v["db_format"],
        db_options=parse_format_options(v["db_options"]), cache=str(v["cache"]) if v["cache"] else None,
        use_cache=not v["no_cache"], checkpoints_dir=str(v["checkpoints_dir"]), preset=v["preset"],
        variant=v["variant"], size=v["size"], mse_weight=v["mse_weight"], rank_weight=get("rank_weight"),
        ranker=v["ranker"], target_ranks=v["target_ranks"], sorter=str(v["sorter"]) if v["sorter"] else None,
        rank_temperature=v["rank_temperature"], batch_size=get("batch_size"), epochs=get("nepoch"), lr=get("lr"),
        decay=v["decay"], decay_every=get("decay_every"), train_fraction=v["split"] if v["split"] is not None else 0.8,
        val_fraction=v["val_fraction"], standardise=v["standardise"], train_crop=v["train_crop"],
        eval_crop=v["eval_crop"], small=v["small"], augment=v["augment"], eval_every=get("testset_freq"),
        eval_batch_size=get("eval_batch_size"), seed=v["seed"], device=v["device"], num_workers=v["workers"],
        resume=v["resume"])


def sorter_config(ctx: typer.Context, v: dict):
    from ..errors import InvalidInputError
    from ..training.sorter import SorterTrainConfig

    if v["store"] is not None:
        raise InvalidInputError(f"--method sorter trains on random vectors, not on {v['store']}: drop it")
    get = lambda name: _value(ctx, v, "sorter", name)  # noqa: E731
    return SorterTrainConfig(
        name=v["name"], checkpoints_dir=str(v["checkpoints_dir"]), preset=v["preset"] or "original",
        n_vectors=v["vectors"], batch_size=get("batch_size"), epochs=get("nepoch"), lr=get("lr"), decay=v["decay"],
        decay_every=get("decay_every"), eval_every=get("testset_freq"), seed=v["seed"], device=v["device"],
        num_workers=v["workers"], resume=v["resume"])


def train_asna_command(ctx: typer.Context, values: dict) -> None:
    """`iqa train --method asna|sorter`, from the train command's parameter values."""
    from .train import run_reported

    method = values["method"]
    reject_family_options(ctx, method)
    run_dir = Path(values["checkpoints_dir"]) / values["name"]
    if method == "asna":
        from ..training.asna import train_asna

        cfg = asna_config(ctx, values)
        result = run_reported(lambda progress: train_asna(cfg, progress), run_dir, asna_epoch_line)
    else:
        from ..training.sorter import train_sorter_run

        cfg = sorter_config(ctx, values)
        result = run_reported(lambda progress: train_sorter_run(cfg, progress), run_dir, sorter_epoch_line)
    if values["as_json"]:
        emit_json(result.to_dict())
    elif method == "asna":
        _print_asna(result)
    else:
        _print_sorter(result)


def _num(value, fmt: str = ".4f") -> str:
    return "-" if value is None or value != value else format(value, fmt)


def asna_epoch_line(row: dict, total: int) -> str:
    from .train import epoch_line_start

    parts = epoch_line_start(row, total)
    if row.get("val_srocc") is not None:
        parts.append(f"val SROCC {_num(row['val_srocc'])}")
    if row.get("test_srocc") is not None:
        parts.append(f"test SROCC {_num(row['test_srocc'])}  PLCC {_num(row.get('test_plcc'))}")
    if row.get("units_per_s") is not None:
        parts.append(f"({row['units_per_s']:.1f} pairs/s)")
    return "  ".join(parts)


def sorter_epoch_line(row: dict, total: int) -> str:
    from .train import epoch_line_start

    parts = epoch_line_start(row, total)
    if row.get("rank_error") is not None:
        parts.append(f"rank error {_num(row['rank_error'])}  Spearman gap {_num(row.get('spearman_gap'))} "
                     f"(max {_num(row.get('spearman_gap_max'))})")
    if row.get("units_per_s") is not None:
        parts.append(f"({row['units_per_s']:.0f} vectors/s)")
    return "  ".join(parts)


def _epochs(run) -> str:
    return (f"{run.epochs_completed}/{run.total_epochs}"
            + (f" (resumed from {run.resumed_from})" if run.resumed_from is not None else "")
            + (" (stopped early)" if run.stopped_early else ""))


def _print_asna(result) -> None:
    from rich.console import Console
    from rich.table import Table

    run, cfg = result.run, result.run.config
    table = Table(title=f"iqa train {run.name} (asna, {cfg['preset'] or cfg['variant'] or 'simple'} preset, variant "
                        f"{cfg['variant'] or 'of the preset'})")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("epochs", _epochs(run))
    table.add_row("pairs train / val / test", f"{run.n_train} / {result.n_val} / {run.n_test}")
    table.add_row("best epoch", f"{result.best_epoch}" + (" (validation SROCC)" if result.n_val else " (the last)"))
    for key, label in (("val_srocc", "validation SROCC"), ("test_srocc", "test SROCC"), ("test_plcc", "test PLCC"),
                       ("test_rmse", "test RMSE (standardised)")):
        table.add_row(f"{label} at the best epoch", _num(result.best.get(key)))
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
    table.add_row("epochs", _epochs(result))
    table.add_row("training vectors", str(result.n_train))
    table.add_row("mean |rank error| (fresh vectors)", _num(result.final.get("rank_error")))
    table.add_row("Spearman gap, mean / max (fresh pairs)",
                  f"{_num(result.final.get('spearman_gap'))} / {_num(result.final.get('spearman_gap_max'))}")
    table.add_row("checkpoint", str(result.checkpoint))
    table.add_row("metrics", str(result.metrics_csv))
    table.add_row("time", f"{result.seconds:.1f} s")
    Console().print(table)
    err_console.print(f"use with: iqa train --method asna DB --ranker sorter --sorter {result.checkpoint}")
