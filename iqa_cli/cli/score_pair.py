"""`iqa score-pair`: full-reference scores (LPIPS, PSNR, SSIM, ...) of two images, two folders, or all pairs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import (BackboneWeightsOpt, CheckpointOpt, DestandardiseOpt, DeviceOpt, JsonOpt, NetOpt, OrderOpt,
                     PrecisionOpt, SmallOpt, TtaOpt, VersionOpt, build_metrics, emit_json, err_console, progress_bar)


def score_pair(
    ref: Path = typer.Argument(..., help="Reference image, or a folder of them."),
    dist: Optional[Path] = typer.Argument(None, help="Distorted image, or a folder matched to REF by relative path."),
    metric: Optional[List[str]] = typer.Option(
        None, "--metric", "-m", help="Full-reference metric from 'iqa list-metrics' (lpips, graphics-lpips, "
        "baseline, psnr, ssim, ms-ssim, fsim, gmsd, vif). Repeat it, or give a comma-separated list, for one "
        "column per metric from the same pass over the images. Default: what --checkpoint holds, else lpips."),
    net: Optional[str] = NetOpt,
    version: Optional[str] = VersionOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
    backbone_weights: Optional[Path] = BackboneWeightsOpt,
    order: Optional[str] = OrderOpt,
    small: Optional[str] = SmallOpt,
    tta: Optional[bool] = TtaOpt,
    destandardise: Optional[str] = DestandardiseOpt,
    all_pairs: bool = typer.Option(False, "--all-pairs", help="Score every pair of images inside the one folder REF."),
    skip_unmatched: bool = typer.Option(False, "--skip-unmatched",
                                        help="Score matched pairs even when some files have no partner."),
    resize: bool = typer.Option(False, "--resize", help="Rescale DIST to REF's size when they differ."),
    spatial_map: Optional[Path] = typer.Option(
        None, "--spatial-map", help="Two images: write the per-pixel distance map (LPIPS family) to this file. "
        ".png: inferno colours at the image size plus a colour bar; .jpg/.webp: colours only; .npy or .tif: "
        "the raw float32 distances."),
    spatial_dir: Optional[Path] = typer.Option(None, "--spatial-dir", help="Folders: write one map per pair under "
                                               "this folder (same relative paths, .png)."),
    vmax: Optional[float] = typer.Option(
        None, "--vmax", min=0.0, help="Distance shown white-yellow in colour maps (0 is black). Default: each "
        "map's own maximum, so maps of different pairs are not comparable; give one value to compare them."),
    colorbar: bool = typer.Option(True, "--colorbar/--no-colorbar", help="Add the colour bar to .png maps."),
    device: str = DeviceOpt,
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Pairs per forward pass."),
    precision: str = PrecisionOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Write ref,dist and one score column per metric to this "
                                       "CSV."),
    as_json: bool = JsonOpt,
) -> None:
    """Full-reference quality of DIST against REF: two images, two folders, or all pairs in a folder.

    LPIPS-family scores are distances (0 = identical, larger = more different); 'iqa list-metrics'
    says which way every metric points.

    \b
    Examples:
      iqa score-pair ref.png dist.png
      iqa score-pair ref.png dist.png --metric lpips --metric ssim --metric psnr
      iqa score-pair ref.png dist.png --net vgg --spatial-map heat.png --vmax 0.5
      iqa score-pair refs/ dists/ -m lpips,ssim --out scores.csv  # pairs by path
      iqa score-pair frames/ --all-pairs --json
      iqa score-pair ref.png dist.png --checkpoint graphics_lpips.pth
    """
    from ..errors import InvalidInputError
    from ..pairs import plan_pairs

    plan = plan_pairs(ref, dist, all_pairs=all_pairs, skip_unmatched=skip_unmatched)
    if spatial_map is not None and plan.folder_mode:
        raise InvalidInputError("--spatial-map is for two images: use --spatial-dir DIR with folders")
    if spatial_dir is not None and not plan.folder_mode:
        raise InvalidInputError("--spatial-dir is for folders: use --spatial-map OUT.png with two images")
    from ..io.files import check_output_paths, write_csv

    check_output_paths([(out, "--out", False), (spatial_map, "--spatial-map", False),
                        (spatial_dir, "--spatial-dir", True)],
                       inputs={"REF": ref, "DIST": dist, "--checkpoint": checkpoint,
                               "--backbone-weights": backbone_weights})
    from ..io.images import heatmap_format, save_heatmap
    from ..pairs import check_sizes, heatmap_names, score_pairs

    if spatial_map is not None:
        heatmap_format(spatial_map)  # an unwritable format fails now, not after scoring

    sizes = check_sizes(plan, resize)  # fail on size mismatches before loading any model
    map_names = dict(zip(plan.pairs, heatmap_names(plan, ref, all_pairs))) if spatial_dir is not None else {}
    models = build_metrics(metric, kind="fr", net=net, version=version, checkpoint=checkpoint,
                           backbone_weights=backbone_weights, order=order, small=small, tta=tta,
                           destandardise=destandardise, device=device)

    def map_path(ref_file: Path, dist_file: Path) -> Path:
        if spatial_map is not None:
            return spatial_map
        return spatial_dir / map_names[(ref_file, dist_file)]

    sink = None
    if spatial_map is not None or spatial_dir is not None:
        def sink(ref_file, dist_file, heat):
            save_heatmap(map_path(ref_file, dist_file), heat, vmax=vmax, colorbar=colorbar)
    with progress_bar("scoring", len(plan.pairs), "pairs", enabled=plan.folder_mode) as advance:
        results = score_pairs(plan, models, batch_size=batch_size, device=device, resize=resize,
                              on_spatial_map=sink, advance=advance, sizes=sizes, precision=precision)
    from ..engine import is_main_process

    if not is_main_process():  # under torchrun: every process scored its share; the main one writes
        return
    names = [m.name for m in models]
    single = len(models) == 1
    columns = ["score"] if single else names
    if out is not None:
        write_csv(out, ["ref", "dist", *columns],
                  [(str(r.ref), str(r.dist), *(f"{r.scores[n]:.8f}" for n in names)) for r in results])

    def row_scores(r) -> dict:
        return {"score": r.score} if single else dict(r.scores)

    meta = models[0].meta() if single else {"metrics": [m.meta() for m in models]}
    if not plan.folder_mode:
        r = results[0]
        if as_json:
            emit_json({"ref": str(r.ref), "dist": str(r.dist), **row_scores(r), **meta,
                       **({"spatial_map": str(spatial_map)} if spatial_map else {})})
        elif single:
            typer.echo(f"{r.score:.6f}")
            err_console.print(f"{models[0].describe()}: {r.ref} vs {r.dist}")
        else:
            for m in models:
                typer.echo(f"{m.name}\t{r.scores[m.name]:.6f}")
            err_console.print(f"{r.ref} vs {r.dist}: " + "; ".join(m.describe() for m in models))
        return

    means = {n: sum(r.scores[n] for r in results) / len(results) for n in names}
    if as_json:
        emit_json({"pairs": [{"ref": str(r.ref), "dist": str(r.dist), **row_scores(r)} for r in results],
                   "mean": means[names[0]] if single else means, "n": len(results), **meta,
                   "unmatched": {"ref": plan.unmatched_ref, "dist": plan.unmatched_dist}})
        return
    _print_table(results, models, means)
    if plan.unmatched_ref or plan.unmatched_dist:
        err_console.print(f"[yellow]skipped {len(plan.unmatched_ref)} file(s) only in REF and "
                          f"{len(plan.unmatched_dist)} only in DIST[/]")


def _print_table(results, models, means: dict, limit: int = 40) -> None:
    from rich.console import Console
    from rich.table import Table

    title = models[0].describe() if len(models) == 1 else ", ".join(m.describe() for m in models)
    table = Table(title=title, show_footer=True)
    table.add_column("ref", footer="mean")
    table.add_column("dist", footer=f"{len(results)} pairs")
    for m in models:
        arrow = "↓" if m.lower_better else "↑"  # which way is better
        table.add_column(f"{m.name} {arrow}" if len(models) > 1 else "score", justify="right",
                         footer=f"{means[m.name]:.6f}")
    for r in results[:limit]:
        table.add_row(str(r.ref), str(r.dist), *(f"{r.scores[m.name]:.6f}" for m in models))
    if len(results) > limit:
        table.add_row("...", f"{len(results) - limit} more (use --out or --json)", *([""] * len(models)))
    Console().print(table)
