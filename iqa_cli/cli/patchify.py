"""`iqa patchify`: renders (or published Graphics-LPIPS patches) + DB.csv -> HDF5 patch store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import JsonOpt, emit_json, err_console, progress_bar


def patchify(
    renders: Optional[Path] = typer.Argument(None, metavar="RENDERS", show_default=False,
                                             help="Folder with references/ and stimuli/ renders "
                                                  "(see datasets/README.md). Not needed with --from-patches."),
    db: Path = typer.Option(..., "--db", help="Database CSV: model,stimulus[,MOS][,split] "
                                              "(+ nbPatchesVP1 with --from-patches)."),
    out: Path = typer.Option(..., "--out", "-o", help="Patch store to write (.h5)."),
    patch_size: Optional[int] = typer.Option(None, "--patch-size", min=1, show_default="64",
                                             help="Patch side in pixels."),
    stride: Optional[int] = typer.Option(None, "--stride", min=1, show_default="64",
                                         help="Grid step in pixels."),
    min_foreground: Optional[float] = typer.Option(None, "--min-foreground", min=0.0, max=1.0, show_default="0.6",
                                                   help="Keep a tile when at least this fraction of it is object."),
    background: Optional[str] = typer.Option(None, "--background", show_default="auto",
                                             help="Background colour when renders have no alpha: 'auto' (most "
                                                  "common border colour) or R,G,B."),
    from_patches: Optional[Path] = typer.Option(None, "--from-patches", metavar="ROOT",
                                                help="Import published Graphics-LPIPS patch folders "
                                                     "(References_patches*/, *Stimuli_patches*/) instead of renders."),
    counts_csv: Optional[Path] = typer.Option(None, "--counts-csv", metavar="OUT.csv",
                                              help="Also write patch counts per stimulus in the Graphics-LPIPS CSV "
                                                   "format (model,stimulus,MOS,nbPatchesVP1..4)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the store is up to date (and overwrite "
                                                      "an --out file that is not a patch store)."),
    json_out: bool = JsonOpt,
) -> None:
    """Cut renders into patches and cache them in an HDF5 patch store for score-mesh-db and train.

    A tile is kept where the reference render is at least --min-foreground object (alpha, else not background).

    The same tiles are cut from every distorted render. Re-running on unchanged sources does nothing.

    \b
    Examples:
      iqa patchify renders/ --db DB.csv --out store.h5 --counts-csv counts.csv
      iqa patchify renders/ --db DB.csv --out store.h5 --patch-size 64 \\
          --stride 32 --background 255,255,255
      iqa patchify --from-patches published_patches/ --db TestList.csv \\
          --out store.h5
    """
    from ..datasets.mesh_db import plan_patchify, run_patchify, write_counts_csv
    from ..errors import InvalidInputError
    from ..io.files import check_output_path
    from ..io.patches import PatchSpec

    check_output_path(out, "--out")
    if counts_csv is not None:
        check_output_path(counts_csv, "--counts-csv")
        for other, option in ((db, "--db"), (out, "--out")):
            if counts_csv.resolve() == other.resolve():
                raise InvalidInputError(f"{counts_csv}: --counts-csv names the same file as {option}, which it would "
                                        f"overwrite; choose another path, e.g. counts.csv")
    if from_patches is not None:
        given = [name for name, value in (("--patch-size", patch_size), ("--stride", stride),
                                          ("--min-foreground", min_foreground), ("--background", background))
                 if value is not None]
        if given:
            raise InvalidInputError(f"{', '.join(given)} do not apply to --from-patches (the published patches are "
                                    "already cut; their size is read from the files)")
    spec = PatchSpec(size=patch_size or 64, stride=stride or 64,
                     min_foreground=0.6 if min_foreground is None else min_foreground,
                     background=background or "auto")

    plan = plan_patchify(renders, db, out, spec, from_patches=from_patches, force=force)
    if plan.up_to_date:
        result = run_patchify(plan)
    else:
        with progress_bar("patchify", plan.n_units, plan.unit, enabled=not json_out) as advance:
            result = run_patchify(plan, progress=advance)
    if counts_csv is not None:
        write_counts_csv(result.store, counts_csv)

    from rich.text import Text

    for message in result.warnings:
        err_console.print(Text("warning: ", style="bold yellow") + Text(message))
    if json_out:
        doc = result.to_dict()
        doc["counts_csv"] = None if counts_csv is None else str(counts_csv)
        emit_json(doc)
        return
    _render(result, counts_csv)


def _render(result, counts_csv: Optional[Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    if not result.built:
        console.print(f"{result.store} is up to date (same sources and parameters); nothing to do "
                      "(use --force to rebuild)")
    else:
        rate = result.n_read / result.seconds if result.seconds > 0 else 0.0
        console.print(f"wrote {result.store}: {result.n_patches:,} patches from {result.n_read:,} {result.unit} "
                      f"in {result.seconds:.1f} s ({rate:,.1f} {result.unit}/s)")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    thr = "unknown" if result.min_foreground != result.min_foreground else f"{result.min_foreground:g}"
    rows = [
        ("source", result.source),
        ("models", f"{result.n_models:,} ({result.n_views:,} views in all)"),
        ("stimuli", f"{result.n_stimuli:,}" + (f" ({sum(1 for _ in result.no_foreground)} model(s) flagged "
                                               "no-foreground)" if result.no_foreground else "")),
        ("distorted patches", f"{result.n_patches:,}"),
        ("reference patches", f"{result.n_reference:,}"),
        ("patch size / stride", f"{result.patch_size} / {result.stride if result.stride > 0 else 'n/a'}"),
        ("min foreground", thr),
        ("MOS", "yes" if result.has_mos else "no"),
    ]
    if counts_csv is not None:
        rows.append(("counts CSV", str(counts_csv)))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
