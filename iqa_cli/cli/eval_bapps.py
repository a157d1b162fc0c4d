"""`iqa eval-bapps 2afc|jnd ROOT` and the shortcut `iqa eval-jnd ROOT`: the BAPPS protocols."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import (TYPER_SETTINGS, BackboneWeightsOpt, CheckpointOpt, DeviceOpt, JsonOpt, MultiValueOptionsCommand,
                     NetOpt, VersionOpt, emit_json, err_console, progress_bar, resolve_backbone_weights)


class MultiValueCommand(MultiValueOptionsCommand):
    """``--datasets val/cnn val/deblur ROOT`` works: the last value is ROOT when ROOT is missing."""

    multi_value_options = ("--datasets",)
    trailing_value_may_be_argument = True


app = typer.Typer(
    help="BAPPS benchmark protocols (the LPIPS paper's 2AFC and JND tests) over a BAPPS 'dataset' folder.\n\n"
         "\b\nExamples:\n"
         "  iqa eval-bapps 2afc dataset/ --datasets val/traditional val/cnn\n"
         "  iqa eval-bapps jnd dataset/ --model ssim --json",
    **TYPER_SETTINGS,
)

RootArg = typer.Argument(..., help="The BAPPS 'dataset' folder, holding 2afc/ and jnd/ (see docs/bapps.md).",
                         show_default=False)
DatasetsOpt = typer.Option(None, "--datasets", help="Subsets as SPLIT/NAME (e.g. val/cnn; a bare name means val/NAME). "
                           "Several after one flag, repeated, or comma-separated. Default: every val subset present.",
                           show_default=False)
ModelOpt = typer.Option("lpips", "--model", help="lpips | baseline (LPIPS without heads) | l2 | ssim (DSSIM).")
ColorspaceOpt = typer.Option("Lab", "--colorspace", help="Lab | RGB: where l2 and ssim compare images.")
BappsBatchOpt = typer.Option(50, "--batch-size", min=1, help="Items (triplets or pairs) per forward pass.")
LimitOpt = typer.Option(None, "--limit", min=1, help="Only the first N items (by name) of each subset, for a quick look.")
OutOpt = typer.Option(None, "--out", help="Write per-item rows to this CSV (2afc: d0,d1,judge,agreement; "
                      "jnd: d,same).", show_default=False)


def _split_datasets(values: Optional[List[str]]) -> Optional[List[str]]:
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _run(mode: str, root: Path, datasets, model, net, version, checkpoint, backbone_weights, colorspace, batch_size,
         device, limit, out, as_json) -> None:
    from ..io.files import check_output_paths

    # missing parent folders are created, as every other command's --out does
    check_output_paths([(out, "--out", False)],
                       inputs={"ROOT": root, "--checkpoint": checkpoint, "--backbone-weights": backbone_weights})

    from ..bapps_eval import eval_bapps
    from ..datasets.bapps import count_items

    subsets = _split_datasets(datasets)
    total = sum(count_items(root, mode, subsets, limit).values())
    with progress_bar(f"BAPPS {mode}", total, "items") as advance:
        report = eval_bapps(root, mode=mode, subsets=subsets, model=model, net=net, version=version,
                            checkpoint=checkpoint, backbone_weights=resolve_backbone_weights(backbone_weights),
                            colorspace=colorspace, batch_size=batch_size, device=device, limit=limit,
                            advance=advance)
    if out is not None:
        from ..io.files import write_csv

        columns = report.columns
        write_csv(out, columns, ([row[c] if c in ("subset", "name") else repr(row[c]) for c in columns]
                                 for row in report.rows()))
    if as_json:
        emit_json(report.summary())
        return
    _print_table(report)
    if out is not None:
        err_console.print(f"wrote {sum(report.n.values())} rows to {out}")


def _print_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..bapps_eval import SCORE_NAMES

    def pct(x: float) -> str:
        return "n/a" if x != x else f"{100 * x:.2f}"

    table = Table(title=f"BAPPS {report.mode.upper()} · {report.model}", show_footer=True)
    table.add_column("subset", footer="mean")
    table.add_column("n", justify="right", footer=str(sum(report.n.values())))
    table.add_column(f"{SCORE_NAMES[report.mode]} (%)", justify="right", footer=pct(report.mean))
    for result in report.results:
        table.add_row(result.subset, str(result.n), pct(result.score))
    Console().print(table)


@app.command("2afc", cls=MultiValueCommand)
def eval_2afc(
    root: Path = RootArg,
    datasets: Optional[List[str]] = DatasetsOpt,
    model: str = ModelOpt,
    net: Optional[str] = NetOpt,
    version: Optional[str] = VersionOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
    backbone_weights: Optional[Path] = BackboneWeightsOpt,
    colorspace: str = ColorspaceOpt,
    batch_size: int = BappsBatchOpt,
    device: str = DeviceOpt,
    limit: Optional[int] = LimitOpt,
    out: Optional[Path] = OutOpt,
    as_json: bool = JsonOpt,
) -> None:
    """2AFC: how often the metric agrees with people about which of p0, p1 is closer to ref.

    Each triplet scores 1-h when d0 < d1, h when d1 < d0 and 0.5 on a tie (h = fraction of people who chose p1);
    the score is their mean.

    \b
    Examples:
      iqa eval-bapps 2afc dataset/
      iqa eval-bapps 2afc dataset/ --datasets val/traditional val/cnn --net vgg
      iqa eval-bapps 2afc dataset/ --model ssim --colorspace RGB --limit 200 \\
          --out items.csv
    """
    _run("2afc", root, datasets, model, net, version, checkpoint, backbone_weights, colorspace, batch_size,
         device, limit, out, as_json)


@app.command("jnd", cls=MultiValueCommand)
def eval_jnd(
    root: Path = RootArg,
    datasets: Optional[List[str]] = DatasetsOpt,
    model: str = ModelOpt,
    net: Optional[str] = NetOpt,
    version: Optional[str] = VersionOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
    backbone_weights: Optional[Path] = BackboneWeightsOpt,
    colorspace: str = ColorspaceOpt,
    batch_size: int = BappsBatchOpt,
    device: str = DeviceOpt,
    limit: Optional[int] = LimitOpt,
    out: Optional[Path] = OutOpt,
    as_json: bool = JsonOpt,
) -> None:
    """JND: average precision of 'same' pairs ranked by ascending distance (default: val/traditional, val/cnn).

    \b
    Examples:
      iqa eval-jnd dataset/
      iqa eval-bapps jnd dataset/ --datasets val/cnn --model l2 \\
          --colorspace Lab --json
    """
    _run("jnd", root, datasets, model, net, version, checkpoint, backbone_weights, colorspace, batch_size,
         device, limit, out, as_json)
