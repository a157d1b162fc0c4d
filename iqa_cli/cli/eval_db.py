"""`iqa eval-db`: evaluate metrics on an image-quality database, with confidence intervals."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import (BackboneWeightsOpt, CheckpointOpt, ClipVisualWeightsOpt, ClipWeightsOpt, CropsOpt,
                     DestandardiseOpt, DeviceOpt, JsonOpt, LowLevelWeightsOpt, NetOpt, OrderOpt, PrecisionOpt,
                     PristineOpt, SmallOpt, TtaOpt, VersionOpt, build_metrics, emit_json, err_console, progress_bar)


def eval_db(
    root: Path = typer.Argument(..., help="The database folder, as its authors ship it."),
    db_format: str = typer.Option("auto", "--format", help="tid2013, tid2008, kadid10k, live, csiq, pipal, koniq10k, "
                                  "clive, spaq, pieapp, csv, ... or auto (recognised by its files)."),
    db_options: List[str] = typer.Option([], "--db-option", metavar="NAME=VALUE", help="A reader option, e.g. "
                                         "dmos=original (LIVE), score=MOS_zscore (KonIQ); repeatable."),
    metric: Optional[List[str]] = typer.Option(None, "--metric", "-m", help="Metrics from 'iqa list-metrics' "
                                               "(repeat, or comma-separate). Full-reference ones need references; "
                                               "no-reference ones score the distorted images. Default: lpips."),
    net: Optional[str] = NetOpt,
    version: Optional[str] = VersionOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
    backbone_weights: Optional[Path] = BackboneWeightsOpt,
    order: Optional[str] = OrderOpt,
    small: Optional[str] = SmallOpt,
    tta: Optional[bool] = TtaOpt,
    destandardise: Optional[str] = DestandardiseOpt,
    pristine: Optional[Path] = PristineOpt,
    low_level_weights: Optional[Path] = LowLevelWeightsOpt,
    clip_weights: Optional[Path] = ClipWeightsOpt,
    clip_visual_weights: Optional[Path] = ClipVisualWeightsOpt,
    crops: Optional[int] = CropsOpt,
    cache: Optional[Path] = typer.Option(None, "--cache", help="HDF5 image cache to use or build (default: under "
                                         "$IQA_CACHE_DIR, else ~/.cache/iqa; never inside the database)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Decode the image files on every run instead."),
    short_side: Optional[int] = typer.Option(None, "--short-side", min=0, show_default="the database's",
                                             help="Resize each image's shorter side first (0: full size; SPAQ: 512)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=5, help="Evaluate only the first N images (a quick "
                                        "look; the statistics then describe those)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples for the 95% intervals and "
                                  "the paired test (0: none). Synthetic databases resample reference contents."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the bootstrap resampling."),
    device: str = DeviceOpt,
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Distorted images per forward pass."),
    precision: str = PrecisionOpt,
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="DataLoader processes reading images."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write one row per image, one column per metric (CSV)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Scatter per metric with its fit, and SROCC per "
                                        "distortion type (.png, .pdf or .svg)."),
    as_json: bool = JsonOpt,
) -> None:
    """Score every image of a database with each metric and report SROCC, KROCC, PLCC and RMSE
    (after the VQEG logistic fit) with 95% bootstrap intervals, SROCC per distortion type, and a
    paired test between metrics.

    Each metric's scores are aligned with the human score first (multiplied by -1 when one is
    'lower is better' and the other is not), so every correlation reads higher = better agreement.

    \b
    Examples:
      iqa eval-db tid2013/ --metric ssim --metric lpips
      iqa eval-db kadid10k/ -m psnr,ssim,ms-ssim --plot kadid.png --out kadid.csv
      iqa eval-db live/ --db-option dmos=original -m vif --bootstrap 2000 --json
      iqa eval-db koniq/ -m niqe --short-side 0
    """
    from ..datasets.cache import default_cache_path
    from ..datasets.formats import parse_format_options, read_database
    from ..errors import InvalidInputError
    from ..io.files import check_output_paths
    if no_cache and cache is not None:
        raise InvalidInputError("--cache and --no-cache contradict each other: give one")
    table = read_database(root, db_format, **parse_format_options(db_options))
    if limit is not None:
        table = table.head(limit)
    cache_path = None if no_cache else cache if cache is not None else default_cache_path(table)
    weights = {f"--{k.replace('_', '-')}": v for k, v in (
        ("checkpoint", checkpoint), ("backbone_weights", backbone_weights), ("pristine", pristine),
        ("low_level_weights", low_level_weights), ("clip_weights", clip_weights),
        ("clip_visual_weights", clip_visual_weights)) if v is not None}
    check_output_paths([(out, "--out", False), (plot, "--plot", False), (cache_path, "--cache", False)],
                       inputs={"the database": root, **weights})
    if plot is not None:
        from ..plots import plot_format

        plot_format(plot)
    models = build_metrics(metric, device=device, net=net, version=version, checkpoint=checkpoint,
                           backbone_weights=backbone_weights, order=order, small=small, tta=tta,
                           destandardise=destandardise, pristine=pristine, low_level_weights=low_level_weights,
                           clip_weights=clip_weights, clip_visual_weights=clip_visual_weights, crops=crops)
    from ..eval_db import check_metrics_fit

    check_metrics_fit(table, models)
    # everything is checked: say what was found, then work
    if table.detected and not as_json:
        err_console.print(f"detected format: {table.database}")
    from rich.text import Text

    for message in table.warnings:
        err_console.print(Text("warning: ", style="bold yellow") + Text(message))

    store, cache_info = None, None
    if cache_path is not None:
        from ..datasets.cache import build_image_cache, open_image_cache
        from ..engine import share_from_main

        with progress_bar("caching images", len(table.image_paths()), "images", enabled=not as_json) as advance:
            # under torchrun the main process builds the cache; the others read it once it is there
            built = share_from_main(lambda: build_image_cache(table, cache_path, progress=advance,
                                                              short_side=short_side))
        store = open_image_cache(cache_path, table, short_side)
        cache_info = {**built.to_dict(), "path": str(cache_path)}
    from ..eval_db import eval_db as run

    with progress_bar("scoring", len(table), "images", enabled=not as_json) as advance:
        result = run(table, models, store=store, batch_size=batch_size, device=device, bootstrap=bootstrap, seed=seed,
                     num_workers=workers, advance=advance, short_side=short_side, cache=cache_info,
                     precision=precision)
    if out is not None:
        _write_csv(out, result)
    if plot is not None and result.report is not None:
        from ..plots import eval_db_figure

        eval_db_figure(plot, result)
    for note in result.notes[len(table.warnings):]:
        err_console.print(Text("note: ", style="bold yellow") + Text(note))
    if as_json:
        emit_json(result.to_dict())
        return
    _print(result)


def _write_csv(path: Path, result) -> None:
    from ..io.files import write_csv

    t = result.table
    names = list(result.scores)
    refs = [r for r in result.to_dict(images=True)["images"]]
    write_csv(path, ["dist", "ref", t.score_name, "content", "type", "level", *names],
              [(r["dist"], r["ref"] or "", "" if r["mos"] != r["mos"] else r["mos"], r["content"], r["type"],
                r["level"] or "", *(f"{r[n]:.8g}" for n in names)) for r in refs])


def _ci(m, key: str) -> str:
    lo, hi = m.ci.get(key, (None, None))
    value = m.point.get(key)
    text = f"{value:.3f}"
    return text if lo is None else f"{text} [{lo:.2f}, {hi:.2f}]"


def _print(result) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = result.table
    r = result.report
    direction = "higher" if t.higher_better else "lower"
    if r is None:
        console.print(f"{t.database}: {len(t)} images scored (no human scores to compare with)")
        return
    interval = f", {int(r.level * 100)}% bootstrap interval over {r.n_boot} resampled {r.resampling}s" if r.n_boot else ""
    title = f"{t.database}: {len(t)} images, {t.score_name} ({direction} = better){interval}"
    table = Table(title=title, caption="(-): the metric's scores are negated to point like the human score, so every "
                  "correlation reads higher = better")
    for col in ("metric", "n", "SROCC", "KROCC", "PLCC", "RMSE"):
        table.add_column(col, justify="left" if col == "metric" else "right", no_wrap=col != "metric")
    for name, m in r.metrics.items():
        flipped = " (-)" if m.sign < 0 else ""
        table.add_row(name + flipped, str(m.n), _ci(m, "srocc"), _ci(m, "krocc"), _ci(m, "plcc"), _ci(m, "rmse"))
    console.print(table)
    types = list(dict.fromkeys(k for m in r.metrics.values() for k in m.per_type))
    if types:
        names = dict(t.types)
        per = Table(title="SROCC per distortion type")
        per.add_column("type")
        for name in r.metrics:
            per.add_column(name, justify="right")
        for ty in types:
            label = f"{ty} {names.get(ty, '')}".strip()
            per.add_row(label, *(f"{r.metrics[n].per_type.get(ty, float('nan')):.3f}" for n in r.metrics))
        console.print(per)
    if r.comparisons:
        comp = Table(title=f"paired bootstrap test of SROCC differences ({r.n_boot} resamples)")
        for col in ("a", "b", "SROCC a - b", "p"):
            comp.add_column(col, justify="left" if col in ("a", "b") else "right")
        for c in r.comparisons:
            comp.add_row(c.a, c.b, f"{c.difference:+.4f}", f"{c.p_value:.4f}")
        console.print(comp)
