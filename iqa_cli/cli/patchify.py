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
    db: Optional[Path] = typer.Option(None, "--db", show_default=False,
                                      help="Database CSV: model,stimulus[,MOS][,split] "
                                           "(+ nbPatchesVP1 with --from-patches). Not needed with --from-db or --pristine."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", show_default=False, help="Store to write (.h5)."),
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
    from_db: Optional[Path] = typer.Option(None, "--from-db", metavar="ROOT",
                                           help="Build the HDF5 image cache of an image-quality database "
                                                "(whole images) instead of a patch store."),
    db_format: str = typer.Option("auto", "--format", help="With --from-db: the database layout (tid2013, kadid10k, "
                                                           "live, csiq, koniq10k, ..., csv) or auto."),
    db_options: list[str] = typer.Option([], "--db-option", metavar="NAME=VALUE",
                                         help="With --from-db: a reader option, e.g. resolution=512x384 "
                                              "(repeatable)."),
    short_side: Optional[int] = typer.Option(None, "--short-side", min=0, show_default="the database's",
                                             help="With --from-db: resize each image's shorter side to this "
                                                  "(0: full size; SPAQ's default is 512)."),
    pristine: Optional[Path] = typer.Option(None, "--pristine", metavar="IMAGES",
                                            help="Build a pristine store instead: the sharp, colourful 96x96 tiles of "
                                                 "a folder of pristine photographs (for NIQE / GRepQ models)."),
    sharpness: Optional[float] = typer.Option(None, "--sharpness", min=0.0, max=1.0, show_default="0.75",
                                    help="--pristine: keep tiles sharper than this fraction of the image's sharpest "
                                         "(0: off)."),
    colourfulness: Optional[float] = typer.Option(None, "--colourfulness", min=0.0, max=1.0, show_default="0.80",
                                        help="--pristine: of those, keep tiles more colourful than this fraction of "
                                             "the most colourful (0: off)."),
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
      iqa patchify --from-db tid2013/ --format tid2013 --out tid2013.h5
      iqa patchify --pristine photos/ --out pristine.h5 --sharpness 0.75 \\
          --colourfulness 0.80
    """
    from typer._click.exceptions import UsageError

    if from_db is not None and pristine is not None:
        raise UsageError("--from-db and --pristine build different stores: give one of them")
    if out is None:
        raise UsageError("Missing option '--out' / '-o'")
    if db is None and pristine is None and from_db is None:
        raise UsageError("--db is required (the database CSV), unless --from-db ROOT builds an image cache or "
                         "--pristine IMAGES a pristine store")
    if (sharpness is not None or colourfulness is not None) and pristine is None:
        raise UsageError("--sharpness and --colourfulness apply to --pristine stores only")
    if from_db is not None:
        _image_cache(from_db, db_format, db_options, out, short_side, force, json_out,
                     [n for n, v in (("RENDERS", renders), ("--db", db), ("--from-patches", from_patches),
                                     ("--counts-csv", counts_csv), ("--patch-size", patch_size), ("--stride", stride),
                                     ("--min-foreground", min_foreground), ("--background", background))
                      if v is not None])
        return
    db_only = [n for n, v in (("--format", None if db_format == "auto" else db_format),
                              ("--db-option", db_options or None), ("--short-side", short_side)) if v is not None]
    if db_only:
        raise UsageError(f"{', '.join(db_only)} apply only to --from-db ROOT")
    if pristine is not None:
        _patchify_pristine(pristine, out, patch_size, sharpness, colourfulness, force, json_out,
                           renders=renders, db=db, stride=stride, min_foreground=min_foreground, background=background,
                           from_patches=from_patches, counts_csv=counts_csv)
        return
    from ..datasets.mesh_db import plan_patchify, run_patchify, write_counts_csv
    from ..errors import InvalidInputError
    from ..io.files import check_output_paths
    from ..io.patches import PatchSpec

    check_output_paths([(out, "--out", False), (counts_csv, "--counts-csv", False)],
                       inputs={"RENDERS": renders, "--db": db, "--from-patches": from_patches})
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


def _image_cache(root: Path, db_format: str, db_options: list[str], out: Path, short_side: Optional[int],
                 force: bool, json_out: bool, conflicting: list[str]) -> None:
    """--from-db: read the database and decode its images once into an HDF5 image cache."""
    from ..datasets.cache import build_image_cache, cache_is_fresh
    from ..datasets.formats import parse_format_options, read_database
    from ..io.files import check_output_path

    if conflicting:
        raise typer.BadParameter(f"{', '.join(conflicting)} do not apply to --from-db (it caches whole images of a "
                                 "database; patch options are for mesh renders)")
    check_output_path(out, "--out", inputs=[root])
    table = read_database(root, db_format, **parse_format_options(db_options))
    if table.detected and not json_out:
        err_console.print(f"detected format: {table.database}")
    from rich.text import Text

    for message in table.warnings:
        err_console.print(Text("warning: ", style="bold yellow") + Text(message))
    n_files = len(table.image_paths())
    if not force and cache_is_fresh(out, table, short_side):
        result = build_image_cache(table, out, short_side=short_side)
    else:
        with progress_bar("cache", n_files, "images", enabled=not json_out) as advance:
            result = build_image_cache(table, out, progress=advance, short_side=short_side, force=force)
    if json_out:
        emit_json({**result.to_dict(), "format": table.database, "detected": table.detected, "root": str(root),
                   "warnings": list(table.warnings)})
        return
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    if not result.built:
        console.print(f"{out} is up to date (same table and files); nothing to do (use --force to rebuild)")
    else:
        rate = result.n_images / result.seconds if result.seconds > 0 else 0.0
        size = "full size" if not result.short_side else f"shorter side {result.short_side}"
        console.print(f"wrote {out}: {result.n_images:,} images for {result.n_rows:,} rows of {table.database} "
                      f"({result.n_bytes / 2**20:,.1f} MiB, {size}) in {result.seconds:.1f} s ({rate:,.1f} images/s)")


def _patchify_pristine(images: Path, out: Path, patch_size: Optional[int], sharpness: Optional[float],
                       colourfulness: Optional[float], force: bool, json_out: bool, **other) -> None:
    """`iqa patchify --pristine IMAGES --out OUT.h5`: a pristine store (iqa_cli/pristine.py)."""
    from ..errors import InvalidInputError
    from ..io.files import check_output_path
    from ..pristine import (DEFAULT_COLOURFULNESS, DEFAULT_PATCH_SIZE, DEFAULT_SHARPNESS, plan_pristine_store,
                            run_pristine_store)

    given = [f"--{k.replace('_', '-')}" if k not in ("renders",) else "RENDERS"
             for k, v in other.items() if v is not None]
    if given:
        raise InvalidInputError(f"{', '.join(given)} do not apply to --pristine (a pristine store is cut from the "
                                "images folder alone)")
    check_output_path(out, "--out", inputs=[images])
    plan = plan_pristine_store(images, out, patch_size=patch_size or DEFAULT_PATCH_SIZE,
                               sharpness=DEFAULT_SHARPNESS if sharpness is None else sharpness,
                               colourfulness=DEFAULT_COLOURFULNESS if colourfulness is None else colourfulness,
                               force=force)
    if plan.up_to_date:
        result = run_pristine_store(plan)
    else:
        with progress_bar("patchify --pristine", len(plan.images), "images", enabled=not json_out) as advance:
            result = run_pristine_store(plan, progress=advance)

    from rich.text import Text

    for message in result.warnings:
        err_console.print(Text("warning: ", style="bold yellow") + Text(message))
    if json_out:
        emit_json(result.to_dict())
        return
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    if result.built:
        console.print(f"wrote {result.store}: {result.n_patches:,} pristine patches from {result.n_used:,} of "
                      f"{result.n_images:,} images in {result.seconds:.1f} s")
    else:
        console.print(f"{result.store} is up to date (same images and parameters); nothing to do "
                      "(use --force to rebuild)")
    console.print(f"tiles {result.n_tiles:,} -> sharp {result.n_sharp:,} (--sharpness {result.sharpness:g}) -> "
                  f"colourful {result.n_patches:,} (--colourfulness {result.colourfulness:g}), "
                  f"{result.patch_size}x{result.patch_size}")
