"""`iqa score-image`: no-reference quality (NIQE, GRepQ, GraphIQA, ...) of image files or folders."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import (BackboneWeightsOpt, CheckpointOpt, ClipVisualWeightsOpt, ClipWeightsOpt, CropsOpt, DeviceOpt,
                     JsonOpt, LowLevelWeightsOpt, PrecisionOpt, PristineOpt, build_metrics, emit_json, err_console,
                     progress_bar)


def score_image(
    images: List[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    metric: Optional[List[str]] = typer.Option(None, "--metric", "-m", help="No-reference metrics from "
                                               "'iqa list-metrics --kind nr' (repeat, or comma-separate). "
                                               "Default: the metric --checkpoint holds, else niqe."),
    pristine: Optional[Path] = PristineOpt,
    low_level_weights: Optional[Path] = LowLevelWeightsOpt,
    clip_weights: Optional[Path] = ClipWeightsOpt,
    clip_visual_weights: Optional[Path] = ClipVisualWeightsOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
    backbone_weights: Optional[Path] = BackboneWeightsOpt,
    crops: Optional[int] = CropsOpt,
    device: str = DeviceOpt,
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images of one size per forward pass."),
    precision: str = PrecisionOpt,
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="DataLoader processes reading images."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write image and one score column per metric (CSV)."),
    as_json: bool = JsonOpt,
) -> None:
    """Quality of images without a reference. NIQE: lower = better (the official model; --pristine
    refits it); GRepQ and GraphIQA: higher = better.

    \b
    Examples:
      iqa score-image photo.jpg
      iqa score-image photos/ --out niqe.csv
      iqa score-image photos/ -m grepq --low-level-weights grepq_low.tar \\
          --pristine pristine.h5
      iqa score-image photos/ -m graphiqa --crops 25 --json \\
          --checkpoint runs/graphiqa/latest.pth
    """
    from ..io.files import check_output_paths
    from ..score_images import plan_images, score_images

    plan = plan_images(images)
    weights = [p for p in (pristine, low_level_weights, clip_weights, clip_visual_weights, checkpoint,
                           backbone_weights) if p is not None]
    check_output_paths([(out, "--out", False)], inputs=[*images, *weights])
    models = build_metrics(metric, kind="nr", device=device, default="niqe", pristine=pristine,
                           low_level_weights=low_level_weights, clip_weights=clip_weights,
                           clip_visual_weights=clip_visual_weights, checkpoint=checkpoint,
                           backbone_weights=backbone_weights, crops=crops)
    with progress_bar("scoring", len(plan.files), "images", enabled=plan.folder_mode and not as_json) as advance:
        results = score_images(plan, models, batch_size=batch_size, device=device, num_workers=workers,
                               advance=advance, precision=precision)
    names = [m.name for m in models]
    single = len(models) == 1
    if out is not None:
        from ..io.files import write_csv

        write_csv(out, ["image", *(["score"] if single else names)],
                  [(str(r.image), *(f"{r.scores[n]:.8g}" for n in names)) for r in results])
    for m in models:
        if getattr(m, "mode", "").startswith("low-level only"):
            err_console.print(f"[yellow]note:[/] {m.name} is {m.mode}")
    if as_json:
        if not plan.folder_mode and single:
            r = results[0]
            emit_json({"image": str(r.image), "metric": names[0], "score": r.score, **models[0].meta()})
        else:
            rows = [{"image": str(r.image), **({"score": r.score} if single else r.scores)} for r in results]
            emit_json({"images": rows, "n": len(rows), **({"metric": names[0]} if single else {}),
                       "metrics": [m.meta() for m in models]})
        return
    if not plan.folder_mode and single:
        typer.echo(f"{results[0].score:.6f}")
        err_console.print(f"{models[0].describe()}: {results[0].image}")
        return
    _print(results, models)


def _print(results, models, limit: int = 40) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=", ".join(m.describe() for m in models), show_footer=True)
    table.add_column("image", footer=f"{len(results)} images")
    for m in models:
        values = [r.scores[m.name] for r in results]
        finite = [v for v in values if v == v]
        mean = sum(finite) / len(finite) if finite else float("nan")
        table.add_column(f"{m.name} {'↓' if m.lower_better else '↑'}", justify="right", footer=f"mean {mean:.4f}")
    for r in results[:limit]:
        table.add_row(str(r.image), *(f"{r.scores[m.name]:.4f}" for m in models))
    if len(results) > limit:
        table.add_row(f"... {len(results) - limit} more (use --out or --json)", *([""] * len(models)))
    Console().print(table)
