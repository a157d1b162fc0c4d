"""`iqa list-metrics`: every quality model iqa can compute, and whether its weights are here."""

from __future__ import annotations

from typing import Optional

import typer

from .common import JsonOpt, emit_json


def list_metrics(
    kind: Optional[str] = typer.Option(None, "--kind", help="Only 'fr' (full-reference: ref and dist) or 'nr' "
                                       "(no-reference: one image)."),
    as_json: bool = JsonOpt,
) -> None:
    """Every metric: its kind, which way its scores point, their range, what it computes on
    (colour handling), and whether its weights are bundled, found in the cache, or missing.

    \b
    Examples:
      iqa list-metrics
      iqa list-metrics --kind nr
      iqa list-metrics --json | jq '.metrics[] | select(.lower_better) | .name'
    """
    from ..errors import InvalidInputError
    from ..registry import list_metrics as specs_of

    if kind is not None and kind not in ("fr", "nr"):
        raise InvalidInputError(f"--kind {kind}: choose fr (full-reference) or nr (no-reference)")
    specs = specs_of(kind)
    if as_json:
        emit_json({"metrics": [spec.to_dict() for spec in specs]})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="iqa metrics (--json for options, aliases and every weights file)", show_lines=True)
    for column in ("name", "kind", "better", "range", "colour", "weights", "description"):
        table.add_column(column, overflow="fold", no_wrap=column in ("name", "kind", "better", "range"))
    for spec in specs:
        lo, hi = (_number(v) for v in spec.score_range)
        table.add_row(spec.name, spec.kind, "lower" if spec.lower_better else "higher", f"{lo}..{hi}", spec.colour,
                      _weights_cell(spec), spec.description)
    Console().print(table)


def _number(x: float) -> str:
    return "inf" if x == float("inf") else "-inf" if x == float("-inf") else f"{x:g}"


def _weights_cell(spec) -> str:
    """The weights a default build needs (optional alternatives are in --json)."""
    needed = [(w, w.status()) for w in spec.weights if not w.optional]
    if not needed:
        return "none needed"
    return "\n".join(f"{s['file'] or w.what}: {s['status']}" for w, s in needed)
