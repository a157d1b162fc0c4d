"""`iqa score-mesh-db`: Graphics-LPIPS (or any full-reference metric) quality of every stimulus in a patch store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import (BackboneWeightsOpt, CheckpointOpt, DeviceOpt, JsonOpt, NetOpt, PrecisionOpt, VersionOpt,
                     build_metrics, emit_json, err_console, progress_bar)


def score_mesh_db(
    store: Path = typer.Argument(..., help="Patch store written by 'iqa patchify'."),
    checkpoint: Optional[Path] = CheckpointOpt,
    metric: Optional[str] = typer.Option(None, "--metric", help="A full-reference metric from 'iqa list-metrics' "
                                         "(default: what --checkpoint holds, else lpips)."),
    net: Optional[str] = NetOpt,
    version: Optional[str] = VersionOpt,
    backbone_weights: Optional[Path] = BackboneWeightsOpt,
    fit: str = typer.Option("glm", "--fit", help="Mapping before PLCC/RMSE: glm (binomial GLM, logit link; "
                            "MOS in [0,1], as Graphics-LPIPS) or vqeg4 (VQEG 4-parameter logistic)."),
    device: str = DeviceOpt,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Patches per forward pass "
                                             "(default: 512, 128 for vgg)."),
    precision: str = PrecisionOpt,
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="DataLoader processes reading the "
                                          "store (default: 0 on small CPUs, several on CUDA)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write model,stimulus,score,n_patches[,MOS] rows."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Scatter plot of scores vs MOS with the fit "
                                        "(.png, .pdf or .svg)."),
    as_json: bool = JsonOpt,
) -> None:
    """Score every stimulus of a mesh-quality database and, with MOS, report PLCC/SROCC/KROCC/RMSE.

    A stimulus's score is the mean over its patches of min(d, 1), d the distance between each
    distorted patch and the reference patch cut at the same place (other metrics than the LPIPS
    family: the mean of the patch scores).

    \b
    Examples:
      iqa score-mesh-db store.h5 --checkpoint graphics_lpips.pth \\
          --out scores.csv --plot fit.png
      iqa score-mesh-db store.h5 --net vgg --json
    """
    from ..errors import InvalidInputError
    from ..io.files import check_output_paths, write_csv
    from ..stats.correlation import FITS
    from ..score_db import open_store, score_mesh_db as run
    if fit not in FITS:
        raise InvalidInputError(f"--fit {fit}: choose one of {', '.join(FITS)}")
    patch_store = open_store(store)  # validate the store before loading any model
    patch_store.require_patches()
    if plot is not None and not patch_store.has_mos:
        raise InvalidInputError(f"{store}: has no MOS, so there is nothing to plot against (drop --plot)")
    check_output_paths([(out, "--out", False), (plot, "--plot", False)],
                       inputs={"STORE": store, "--checkpoint": checkpoint, "--backbone-weights": backbone_weights})
    if plot is not None:
        from ..plots import plot_format

        plot_format(plot)
    (model,) = build_metrics([metric] if metric else None, kind="fr", net=net, version=version,
                             checkpoint=checkpoint, backbone_weights=backbone_weights, device=device)
    with progress_bar("scoring", patch_store.n_patches, "patches") as advance:
        result = run(patch_store, model, batch_size=batch_size, device=device, precision=precision, fit=fit,
                     num_workers=workers, advance=advance)
    from ..engine import is_main_process

    if not is_main_process():  # under torchrun: every process scored its share; the main one writes
        return

    has_mos = patch_store.has_mos
    if has_mos and result.correlation is None:
        err_console.print("[yellow]warning:[/] fewer than 3 scored stimuli with MOS: no correlation reported")
    if out is not None:
        header = ["model", "stimulus", "score", "n_patches"] + (["MOS"] if has_mos else [])
        write_csv(out, header, [[r.model, r.stimulus, "" if r.score != r.score else f"{r.score:.8f}", r.n_patches]
                                + ([r.mos] if has_mos else []) for r in result.stimuli])
    if plot is not None and result.correlation is not None:
        from ..plots import scatter_with_fit

        scatter_with_fit(plot, [r.score for r in result.stimuli], [r.mos for r in result.stimuli],
                         result.correlation.fit, title=f"{model.describe()} on {store.name}")
    if result.flagged:
        err_console.print(f"[yellow]warning:[/] {len(result.flagged)} stimulus(es) have no usable patch "
                          f"(their model showed no foreground tile) and are not scored: "
                          f"{', '.join(result.flagged[:5])}{' ...' if len(result.flagged) > 5 else ''}")
    if as_json:
        emit_json(result.to_dict())
        return
    _print(result)


def _print(result) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    title = f"{result.description} on {result.store.name}"
    table = Table(title=title)
    for col in ("model", "stimulus", "patches", "score") + (("MOS",) if result.correlation else ()):
        table.add_column(col, justify="left" if col in ("model", "stimulus") else "right")
    shown = result.stimuli[:30]
    for r in shown:
        table.add_row(r.model, r.stimulus, str(r.n_patches), "flagged" if r.flag else f"{r.score:.4f}",
                      *([f"{r.mos:.3f}"] if result.correlation else []))
    if len(result.stimuli) > len(shown):
        table.add_row("...", f"{len(result.stimuli) - len(shown)} more (see --out / --json)", "", "")
    console.print(table)
    c = result.correlation
    if c is None:
        console.print(f"{len(result.stimuli)} stimuli, {result.n_patches} patches (no correlation)")
        return
    stats = Table(title=f"agreement with MOS ({c.fit.kind} fit)")
    for col in ("n", "PLCC", "SROCC", "KROCC", "RMSE", "SROCC (raw)"):
        stats.add_column(col, justify="right")
    stats.add_row(str(c.n), f"{c.plcc:.4f}", f"{c.srocc:.4f}", f"{c.krocc:.4f}", f"{c.rmse:.4f}",
                  f"{c.srocc_raw:.4f}")
    console.print(stats)
