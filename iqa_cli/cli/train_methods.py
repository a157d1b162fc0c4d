"""Which `iqa train` option each training method takes: the one table the train command checks.

`iqa train` is one command for every recipe (LPIPS heads from MOS or BAPPS, GraphIQA, GRepQ, ASNA
and its sorter); the recipes share some options (--nepoch, --lr, --batch-size, --format, --cache)
and own others. An option given to a method that does not take it is a usage error naming the
methods that do. A method's own defaults live in its library config: `config_values` passes on
only the options the user gave, so a default shown in --help for mos/bapps never leaks into
another method's run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import typer

METHODS: dict[str, str] = {
    "mos": "Graphics-LPIPS heads from the MOS of a patch store",
    "bapps": "LPIPS heads from BAPPS 2AFC judgments, with --bapps",
    "graphiqa-pretrain": "GraphIQA on distortion type and level, e.g. of iqa distort output",
    "graphiqa": "GraphIQA fine-tuned on the MOS of a database",
    "grepq-low": "GRepQ's low-level encoder, quality-aware contrastive loss",
    "grepq-high": "GRepQ's CLIP encoder, group contrastive loss on pristine images",
    "grepq-ridge": "GRepQ's data-efficient model, ridge on the encoders' features",
    "asna": "the NTIRE 2021 MACS network on a full-reference database",
    "sorter": "ASNA's learned sorter, on random vectors",
}

# what every method takes
_RUN = {"store", "name", "method", "checkpoints_dir", "seed", "device", "workers", "as_json"}
_LPIPS = _RUN | {"resume", "n_input_img", "npatches", "nepoch", "nepoch_decay", "lr", "testset_freq", "net", "head",
                 "version", "loss", "rank_weight", "rank_temperature", "split", "train_csv", "test_csv", "train_trunk",
                 "from_scratch", "backbone_weights", "bapps", "datasets", "val_datasets", "batch_size",
                 "eval_batch_size", "limit"}
_DATABASE = {"db_format", "db_options", "cache"}
_GRAPHIQA = (_RUN | _DATABASE | {"resume", "embed_size", "crop_size", "batch_size", "nepoch", "nepoch_decay", "lr",
                                 "split", "testset_freq", "backbone_weights", "short_side", "eval_batch_size"})
_ASNA_SORTER = _RUN | {"resume", "preset", "nepoch", "lr", "batch_size", "testset_freq", "decay", "decay_every"}

TAKES: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in {
    "mos": _LPIPS,
    "bapps": _LPIPS,
    "graphiqa-pretrain": _GRAPHIQA | {"steps", "eval_triplets"},
    "graphiqa": _GRAPHIQA | {"init", "crops", "val_fraction"},
    "grepq-low": _RUN | _DATABASE | {"resume", "batch_size", "nepoch", "lr", "split", "no_cache", "versions",
                                     "fragment_grid", "fragment_piece", "weight_decay", "fsim_cache"},
    "grepq-high": _RUN | {"resume", "batch_size", "nepoch", "lr", "group_size", "crop", "clip_weights"},
    "grepq-ridge": _RUN | _DATABASE | {"batch_size", "split", "no_cache", "low_level_weights", "clip_weights",
                                       "clip_visual_weights", "feature_cache", "repeats", "folds", "short_side"},
    "asna": _ASNA_SORTER | _DATABASE | {"no_cache", "variant", "size", "mse_weight", "rank_weight",
                                        "rank_temperature", "ranker", "target_ranks", "sorter", "split",
                                        "val_fraction", "standardise", "train_crop", "eval_crop", "small", "augment",
                                        "eval_batch_size"},
    "sorter": _ASNA_SORTER | {"vectors"},
}.items()}
assert set(TAKES) == set(METHODS)


def resolve_method(method: str | None, bapps) -> str:
    """The method asked for (default: bapps with --bapps, else mos); an unknown one is an error
    listing them all."""
    from ..errors import InvalidInputError

    if method is None:
        return "bapps" if bapps is not None else "mos"
    if method not in METHODS:
        raise InvalidInputError(f"--method {method}: choose one of {', '.join(METHODS)}")
    return method


def given(ctx: typer.Context, name: str) -> bool:
    """True when the user gave option ``name`` on the command line (not its default)."""
    from typer._click.core import ParameterSource

    return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def flag(ctx: typer.Context, name: str) -> str:
    """The option's spelling for messages (its longest name: --nepoch_decay's twin --nepoch-decay)."""
    for param in ctx.command.params:
        if param.name == name:
            return max(param.opts, key=len) if param.opts else name.upper()
    return name


def check_options(ctx: typer.Context, method: str) -> None:
    """A usage error (exit 2) for the first option given that ``method`` does not take."""
    from typer._click.exceptions import UsageError

    for param in ctx.command.params:
        name = param.name
        if name not in TAKES[method] and given(ctx, name):
            takers = [m for m in METHODS if name in TAKES[m]]
            raise UsageError(f"{flag(ctx, name)} does not apply to --method {method} (it is for --method "
                             f"{' | '.join(takers)})", ctx=ctx)


def config_values(ctx: typer.Context, values: dict[str, Any], method: str, renames: dict[str, str] | None = None,
                  always: Iterable[str] = ("name", "checkpoints_dir", "seed", "device", "workers")) -> dict[str, Any]:
    """The keyword arguments of ``method``'s library config: every option it takes that the user
    gave (``values``: the command's arguments), plus ``always``; renamed to the config's field names
    (``renames``, then the shared ones), paths as strings, --db-option parsed."""
    from ..datasets.formats import parse_format_options

    renames = {"workers": "num_workers", **(renames or {})}
    out: dict[str, Any] = {}
    for name in TAKES[method]:
        if name in ("store", "method", "as_json") or not (name in always or given(ctx, name)):
            continue
        value = values[name]
        if isinstance(value, Path):
            value = str(value)
        elif name == "db_options":
            value = parse_format_options(value or [])
        out[renames.get(name, name)] = value
    return out
