"""`iqa train --method graphiqa-pretrain | graphiqa`: the train command's options turned into a
GraphIQA run (training/graphiqa.py), its epoch lines and its summary."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import emit_json
from .train_methods import config_values


def train_graphiqa_command(ctx: typer.Context, v: dict, method: str) -> None:
    from ..errors import InvalidInputError
    from ..training import GraphIQATrainConfig
    from ..training import train as run_training
    from .train import run_reported

    if v["store"] is None:
        raise InvalidInputError(f"--method {method} trains on a database folder: give DB (KADID-10k, the output "
                                f"of 'iqa distort', or any database eval-db reads)")
    config = GraphIQATrainConfig(method=method, database=str(v["store"]), **config_values(ctx, v, method))
    result = run_reported(lambda progress: run_training(config, progress=progress),
                          Path(v["checkpoints_dir"]) / v["name"], graphiqa_epoch_line)
    if v["as_json"]:
        emit_json(result.to_dict())
    else:
        _print_summary(result)


def graphiqa_epoch_line(row: dict, total: int) -> str:
    from .train import epoch_line_start, fmt_number

    num = fmt_number
    parts = epoch_line_start(row, total)
    if row.get("train_triplet") is not None:
        parts.append(f"triplet {row['train_triplet']:.4g}  level MSE {num(row.get('train_level_mse'), '.4g')}")
    if row.get("test_triplet_acc") is not None:
        parts.append(f"held-out loss {num(row.get('test_loss'), '.4g')}  triplet acc "
                     f"{num(row.get('test_triplet_acc'), '.3f')}  level SROCC {num(row.get('test_level_srocc'))}")
    if row.get("val_srocc") is not None:
        parts.append(f"val SROCC {num(row.get('val_srocc'))}  PLCC {num(row.get('val_plcc'))}  test SROCC "
                     f"{num(row.get('test_srocc'))}  PLCC {num(row.get('test_plcc'))}")
    if row.get("units_per_s") is not None:
        parts.append(f"({row['units_per_s']:.1f}/s)")
    return "  ".join(parts)


def _print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from .train import epochs_text, fmt_number

    k = result.model.embed_size if result.model is not None else result.config.get("embed_size")
    table = Table(title=f"iqa train {result.name} ({result.mode}, K={k})")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("epochs", epochs_text(result))
    final, best = result.final, result.best
    if result.mode == "graphiqa-pretrain":
        table.add_row("images train / held out", f"{result.n_train} / {result.n_test}")
        table.add_row("held-out triplet accuracy", fmt_number(final.get("test_triplet_acc")))
        table.add_row("held-out level SROCC", fmt_number(final.get("test_level_srocc")))
    else:
        counts = json.loads((result.run_dir / "split.json").read_text())["counts"]
        table.add_row("images train / val / test", f"{counts['train']} / {counts['val']} / {counts['test']}")
        table.add_row("best epoch (validation SROCC)", f"{best.get('epoch', '-')}")
        for key, label in (("val_srocc", "val SROCC"), ("test_srocc", "test SROCC"), ("test_plcc", "test PLCC")):
            table.add_row(f"{label} at the best epoch", fmt_number(best.get(key)))
        table.add_row("best checkpoint", str(result.best_checkpoint))
    table.add_row("checkpoint", str(result.checkpoint))
    table.add_row("split", str(result.run_dir / "split.json"))
    table.add_row("metrics", str(result.metrics_csv))
    table.add_row("time", f"{result.seconds:.1f} s")
    Console().print(table)
