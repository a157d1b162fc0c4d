"""`iqa distort`: the 25 KADID-10k distortion types x 5 levels of your images, in KADID-10k's layout."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import JsonOpt, emit_json, err_console, progress_bar


def _selection(what: str, last: int, names: bool = False):
    """A callback turning '1,3,10-12' into a sorted list, or a one-line usage error (exit 2)."""

    def parse(value: Optional[str]) -> Optional[list[int]]:
        if value is None:
            return None
        from ..distortions import parse_selection
        from ..errors import InvalidInputError

        try:
            return parse_selection(value, what, last, names=names)
        except InvalidInputError as exc:
            raise typer.BadParameter(str(exc)) from None

    return parse


def distort(
    images: List[Path] = typer.Argument(..., help="Image files and/or folders of them (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: images/ and listing.csv are written there."),
    types: Optional[str] = typer.Option(None, "--types", callback=_selection("type", 25, names=True),
                                        show_default="1-25", help="Distortion types: numbers and ranges "
                                        "(1,3,10-12) or names (jpeg,gaussian-blur); see docs/distortions.md."),
    levels: Optional[str] = typer.Option(None, "--levels", callback=_selection("level", 5), show_default="1-5",
                                         help="Levels, 1 (mildest) to 5: e.g. 1-5, 2,4."),
    seed: int = typer.Option(0, "--seed", min=0,
                             help="Makes every (image, type, level) reproducible, whatever the order or --workers."),
    fmt: str = typer.Option("png", "--format", help="Output format: png | bmp | tif (lossless only)."),
    stretch: bool = typer.Option(False, "--stretch", help="The original generator's min-max stretch of the input "
                                 "and of each result (mapmm), instead of clipping the result to [0, 1]."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                          show_default="one per core, at most 8; one for under 100 images",
                                          help="Processes distorting images in parallel."),
    as_json: bool = JsonOpt,
) -> None:
    """Distort images with the 25 KADID-10k distortion types at 5 levels each.

    KADID-10k's layout: OUT/images/<ref>.png, OUT/images/<ref>_TT_LL.png (type, level), OUT/listing.csv (no scores).

    The listing is written last: a folder without one holds an unfinished run.

    Types 6, 15 and 22 approximate the original MATLAB generator (docs/distortions.md).

    \b
    Examples:
      iqa distort photos/ --out synth/
      iqa distort a.png b.jpg --out synth/ --types 1,3,10-12 --levels 1-5 --seed 7
      iqa distort photos/ --out synth/ --types jpeg,jpeg2000 --json
    """
    from ..distort_db import plan_distort, run_distort

    plan = plan_distort(images, out, types=types, levels=levels, seed=seed, fmt=fmt, stretch=stretch)
    with progress_bar("distorting", plan.n_distorted, "images", enabled=not as_json) as advance:
        result = run_distort(plan, workers=workers, advance=advance)
    if as_json:
        emit_json(result.to_dict())
        return
    typer.echo(f"wrote {result.n_distorted} distorted images of {len(result.references)} reference(s) to "
               f"{plan.images_dir} (listing {result.listing})")
    if result.approximate_types:
        err_console.print(f"note: type(s) {', '.join(map(str, result.approximate_types))} approximate the original "
                          "generator (see docs/distortions.md)")
