"""What every command shares: options that mean the same everywhere, output helpers, progress."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import typer
from typer.core import TyperCommand, TyperGroup
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

err_console = Console(stderr=True, highlight=False, soft_wrap=True)



class HelpGroup(TyperGroup):
    """A command group whose listing gives each sub-command's whole first sentence, wrapped, where
    click cuts it to what fits on one line and ends it with '...'."""

    def format_commands(self, ctx, formatter) -> None:
        rows = [(name, cmd.get_short_help_str(limit=10_000)) for name in self.list_commands(ctx)
                if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


# Settings of every Typer app (the root and its sub-command groups). Help is click's plain layout
# (rich_markup_mode=None): it wraps option names and sentences to the terminal, where typer's rich
# panels cut long option names and help to fit 80 columns ('--backbone-weigh…'); tests/test_cli_help.py
# checks every screen at 80 columns.
TYPER_SETTINGS = dict(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                      cls=HelpGroup, context_settings={"help_option_names": ["-h", "--help"]})

# -- options shared by every command (same name, same meaning) ----------------------------------
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:K", show_default=True)
BatchSizeOpt = typer.Option(64, "--batch-size", min=1, help="Images or patch pairs per forward pass.")


def _check_precision(value: str) -> str:
    """--precision checked while the command line is parsed, before any file is read or model loaded:
    an unknown value is engine.check_precision's one-line error (exit 1)."""
    from ..engine import check_precision

    return check_precision(value)


PrecisionOpt = typer.Option("fp32", "--precision", callback=_check_precision,
                            help="fp32 | tf32 | fp16 | bf16 for the deep networks "
                            "(LPIPS, GRepQ, GraphIQA, ASNA); classic metrics and NIQE always run in fp32. "
                            "For CUDA, and bf16 for CPUs with AMX (docs/gpu.md); on a CPU tf32 is fp32.")
JsonOpt = typer.Option(False, "--json", help="Print exactly one JSON document on stdout.")
NetOpt = typer.Option(None, "--net", help="Backbone: alex | vgg | squeeze (default: the checkpoint's, else alex).")
VersionOpt = typer.Option(None, "--version", help="LPIPS version: 0.1 or 0.0 (default 0.1).")
CheckpointOpt = typer.Option(None, "--checkpoint", help="Heads to load: an LPIPS head file, an original "
                             "Graphics-LPIPS .pth, or a checkpoint written by 'iqa train'.")
BackboneWeightsOpt = typer.Option(None, "--backbone-weights", help="Local backbone weights file instead of "
                                  "torchvision's ImageNet cache ($TORCH_HOME/hub/checkpoints).")
# options of the no-reference metrics (each is passed only to the metrics that take it)
PristineOpt = typer.Option(None, "--pristine", help="niqe: a pristine model .npz or a pristine store .h5 to refit "
                           "it from; grepq: the pristine store ('iqa patchify --pristine').")
LowLevelWeightsOpt = typer.Option(None, "--low-level-weights", help="grepq: the low-level encoder (the authors' "
                                  ".tar or 'iqa train --method grepq-low' output).")
ClipWeightsOpt = typer.Option(None, "--clip-weights", help="grepq: a local CLIP RN50 file (adds the high-level "
                              "part; without it grepq is low-level only).")
ClipVisualWeightsOpt = typer.Option(None, "--clip-visual-weights", help="grepq: a fine-tuned CLIP image tower "
                                    "replacing the one of --clip-weights.")
OrderOpt = typer.Option(None, "--order", help="asna: which image goes to the network's first input: ref-dist "
                        "(default, the released evaluation scripts) or dist-ref (the PIPAL fine-tuning).")
SmallOpt = typer.Option(None, "--small", help="asna: images under 288x288: error (default), pad (black, "
                        "centred) or resize (short side to 288).")
TtaOpt = typer.Option(None, "--tta/--no-tta", help="asna: average 22 test-time augmentations (rotations, flips, "
                      "brightness), as the challenge entry did.")
DestandardiseOpt = typer.Option(None, "--destandardise", help="asna: report pipal (Elo), tid (MOS) or pieapp "
                                "scores instead of standardised ones.")
CropsOpt = typer.Option(None, "--crops", min=1, help="graphiqa: 224x224 crops per image (default 25), at a "
                        "fixed layout.")


def emit_json(document: Any) -> None:
    """The one JSON document a --json run prints (strict JSON: NaN and infinities become null)."""
    sys.stdout.write(json.dumps(_finite(document), indent=2, default=_json_default, allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return json_float(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return _finite(value.item())
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_float(x: float | None) -> float | None:
    """NaN and infinities are not JSON: report them as null."""
    if x is None or x != x or x in (float("inf"), float("-inf")):
        return None
    return float(x)


class RateColumn(ProgressColumn):
    """Items per second in the unit of the work (patches/s, pairs/s, renders/s)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


@contextmanager
def progress_bar(description: str, total: int | None, unit: str, enabled: bool = True) -> Iterator:
    """A rich progress bar on stderr; yields advance(n, postfix=None) (postfix: short text shown
    after the bar, e.g. the current loss). Hidden when stderr is not a terminal unless
    IQA_PROGRESS=1, so logs and --json pipelines stay clean; hidden on all but the main process
    under torchrun (their console is quiet)."""
    show = enabled and not err_console.quiet and (err_console.is_terminal or os.environ.get("IQA_PROGRESS") == "1")
    if not show:
        yield lambda n=1, postfix=None: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit),
                  TimeRemainingColumn(), TextColumn("{task.fields[postfix]}"), console=err_console) as bar:
        task = bar.add_task(description, total=total, postfix="")

        def advance(n: int = 1, postfix: str | None = None) -> None:
            if postfix is None:
                bar.advance(task, n)
            else:
                bar.update(task, advance=n, postfix=postfix)

        yield advance


def build_metrics(names: list[str] | None, kind: str | None = None, device: str = "auto", default: str = "lpips",
                  **options) -> list:
    """The metrics of a repeatable/comma-separated --metric option, each given the options it takes;
    without --metric, the metric --checkpoint holds weights for, else ``default``.

    Options nobody asked for are an error (``--net`` with only ``ssim``); a metric of the wrong kind
    (a no-reference metric in score-pair) is an error naming the kind wanted."""
    from ..errors import InvalidInputError
    from ..registry import checkpoint_metric, create_metric, get_spec

    wanted = [n.strip() for value in (names or []) for n in str(value).split(",") if n.strip()]
    options = {k: v for k, v in options.items() if v is not None}
    if not wanted:
        wanted = [checkpoint_metric(options["checkpoint"]) if "checkpoint" in options else default]
    specs = [get_spec(n) for n in wanted]
    seen = [s.name for s in specs]
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
        raise InvalidInputError(f"--metric {dupes[0]} is given twice: give each metric once")
    for spec in specs:
        if kind is not None and spec.kind != kind:
            what, needed = (("no-reference", "full-reference metrics (ref, dist)") if kind == "fr"
                            else ("full-reference", "no-reference metrics (one image)"))
            raise InvalidInputError(f"--metric {spec.name} is a {what} metric; this command takes {needed} "
                                    f"('iqa list-metrics' shows each metric's kind)")
    unused = sorted(set(options) - {o for s in specs for o in s.options})
    if unused:
        flag = "--" + unused[0].replace("_", "-")
        raise InvalidInputError(f"{flag} does not apply to --metric {', '.join(seen)} "
                                f"(see 'iqa list-metrics --json' for each metric's options)")
    return [create_metric(spec.name, device=device, **{k: v for k, v in options.items() if k in spec.options})
            for spec in specs]


def resolve_backbone_weights(path: Path | None) -> str | Path:
    return path if path is not None else "imagenet"


class MultiValueOptionsCommand(TyperCommand):
    """Lets the ``multi_value_options`` take several values after one flag, as the original LPIPS
    scripts did (``--datasets val/cnn val/deblur``), besides repeating the flag.

    The values after the flag run up to the next token that starts with '-'. With
    ``trailing_value_may_be_argument``, a missing positional argument is taken from the last of
    them (``--datasets val/cnn ROOT``)."""

    multi_value_options: tuple[str, ...] = ()
    trailing_value_may_be_argument = False

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, self._expand(list(args)))

    def _expand(self, args: list[str]) -> list[str]:
        takes_value: dict[str, bool] = {}
        n_arguments = 0
        for param in self.params:
            if getattr(param, "param_type_name", "") == "option":
                flag = bool(getattr(param, "is_flag", False) or getattr(param, "count", False))
                for opt in (*param.opts, *param.secondary_opts):
                    takes_value[opt] = not flag
            elif getattr(param, "param_type_name", "") == "argument":
                n_arguments += 1
        out: list[str] = []
        positionals = 0
        last_group: tuple[str, list[str]] | None = None
        i = 0
        while i < len(args):
            token = args[i]
            if token == "--":
                positionals += len(args) - i - 1
                out.extend(args[i:])
                break
            if token in self.multi_value_options:
                values = []
                i += 1
                while i < len(args) and not args[i].startswith("-"):
                    values.append(args[i])
                    i += 1
                if not values:  # let click report the missing value
                    out.append(token)
                    continue
                for value in values:
                    out.extend([token, value])
                last_group = (token, values)
                continue
            out.append(token)
            if token.startswith("-") and token != "-":
                if "=" not in token and takes_value.get(token, False) and i + 1 < len(args):
                    out.append(args[i + 1])
                    i += 1
            else:
                positionals += 1
            i += 1
        if (self.trailing_value_may_be_argument and positionals < n_arguments and last_group is not None and len(last_group[1]) > 1):
            # the last value after the flag was the missing positional argument
            option, values = last_group
            tail = values[-1]
            for k in range(len(out) - 1, 0, -1):
                if out[k] == tail and out[k - 1] == option:
                    del out[k - 1:k + 1]
                    break
            out.append(tail)
        return out
