"""`iqa score-pair`: LPIPS / Graphics-LPIPS distance between two images or two folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import (BackboneWeightsOpt, CheckpointOpt, DeviceOpt, JsonOpt, NetOpt, VersionOpt, emit_json,
                     err_console, progress_bar, resolve_backbone_weights)


def score_pair(
    ref: Path = typer.Argument(..., help="Reference image, or a folder of them."),
    dist: Optional[Path] = typer.Argument(None, help="Distorted image, or a folder matched to REF by relative path."),
    metric: Optional[str] = typer.Option(None, "--metric", help="lpips | graphics-lpips | baseline "
                                         "(default: what --checkpoint holds, else lpips)."),
    net: Optional[str] = NetOpt,
    version: Optional[str] = VersionOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
    backbone_weights: Optional[Path] = BackboneWeightsOpt,
    all_pairs: bool = typer.Option(False, "--all-pairs", help="Score every pair of images inside the one folder REF."),
    skip_unmatched: bool = typer.Option(False, "--skip-unmatched",
                                        help="Score matched pairs even when some files have no partner."),
    resize: bool = typer.Option(False, "--resize", help="Rescale DIST to REF's size when they differ."),
    spatial_map: Optional[Path] = typer.Option(None, "--spatial-map", help="Write the per-pixel distance heat "
                                               "map of two images to this file (.png; .jpg, .tif, .webp also work)."),
    spatial_dir: Optional[Path] = typer.Option(None, "--spatial-dir", help="For folders: write one heat map per "
                                               "pair under this folder (same relative paths, .png)."),
    device: str = DeviceOpt,
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Pairs per forward pass."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write ref,dist,score rows to this CSV."),
    as_json: bool = JsonOpt,
) -> None:
    """Perceptual distance between REF and DIST (0 = identical; larger = more different).

    \b
    Examples:
      iqa score-pair ref.png dist.png
      iqa score-pair ref.png dist.png --net vgg --spatial-map heat.png
      iqa score-pair refs/ dists/ --out scores.csv          # pairs matched by relative path
      iqa score-pair frames/ --all-pairs --json
      iqa score-pair ref.png dist.png --metric graphics-lpips --checkpoint graphics_lpips.pth
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
    from ..registry import create_metric

    if spatial_map is not None:
        heatmap_format(spatial_map)  # an unwritable format fails now, not after scoring

    sizes = check_sizes(plan, resize)  # fail on size mismatches before loading any model
    map_names = dict(zip(plan.pairs, heatmap_names(plan, ref, all_pairs))) if spatial_dir is not None else {}
    model = create_metric(metric, net=net, version=version, checkpoint=checkpoint,
                          backbone_weights=resolve_backbone_weights(backbone_weights), device=device)
    def map_path(ref_file: Path, dist_file: Path) -> Path:
        if spatial_map is not None:
            return spatial_map
        return spatial_dir / map_names[(ref_file, dist_file)]

    sink = None
    if spatial_map is not None or spatial_dir is not None:
        sink = lambda ref_file, dist_file, heat: save_heatmap(map_path(ref_file, dist_file), heat)  # noqa: E731
    with progress_bar("scoring", len(plan.pairs), "pairs", enabled=plan.folder_mode) as advance:
        results = score_pairs(plan, model, batch_size=batch_size, device=device, resize=resize,
                              on_spatial_map=sink, advance=advance, sizes=sizes)
    if out is not None:
        write_csv(out, ["ref", "dist", "score"], [(str(r.ref), str(r.dist), f"{r.score:.8f}") for r in results])

    meta = {"metric": model.metric_name, "net": model.spec.name, "version": model.version}
    if not plan.folder_mode:
        r = results[0]
        if as_json:
            emit_json({"ref": str(r.ref), "dist": str(r.dist), "score": r.score, **meta,
                       **({"spatial_map": str(spatial_map)} if spatial_map else {})})
        else:
            typer.echo(f"{r.score:.6f}")
            err_console.print(f"{meta['metric']} ({meta['net']}, v{meta['version']}): {r.ref} vs {r.dist}")
        return

    mean = sum(r.score for r in results) / len(results)
    if as_json:
        emit_json({"pairs": [{"ref": str(r.ref), "dist": str(r.dist), "score": r.score} for r in results],
                   "mean": mean, "n": len(results), **meta,
                   "unmatched": {"ref": plan.unmatched_ref, "dist": plan.unmatched_dist}})
        return
    _print_table(results, mean, meta)
    if plan.unmatched_ref or plan.unmatched_dist:
        err_console.print(f"[yellow]skipped {len(plan.unmatched_ref)} file(s) only in REF and "
                          f"{len(plan.unmatched_dist)} only in DIST[/]")


def _print_table(results, mean: float, meta: dict, limit: int = 40) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{meta['metric']} ({meta['net']}, v{meta['version']})", show_footer=True)
    table.add_column("ref", footer="mean")
    table.add_column("dist", footer=f"{len(results)} pairs")
    table.add_column("score", justify="right", footer=f"{mean:.6f}")
    for r in results[:limit]:
        table.add_row(str(r.ref), str(r.dist), f"{r.score:.6f}")
    if len(results) > limit:
        table.add_row("...", f"{len(results) - limit} more (use --out or --json)", "")
    Console().print(table)
