"""`dnas space ...`: inspect a search space and the operators it expands into."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dnas.options import SPACE, Candidates, Classes, HeadC, Resolution, SpaceName, Width, build_space, space_options
from search.space.enumerate import enumerate_ops

app = typer.Typer(no_args_is_help=True, help="Search spaces: show one, list its unique operators, export them.")


@app.command()
def show(
    name: SpaceName = SPACE.name,
    resolution: Resolution = SPACE.resolution,
    width: Width = SPACE.width,
    classes: Classes = SPACE.num_classes,
    head_c: HeadC = None,
    candidates: Candidates = None,
) -> None:
    """The fully resolved space as JSON, with its content hash."""
    typer.echo(build_space(space_options(name, resolution, width, classes, head_c, candidates)).to_json())


@app.command()
def ops(
    name: SpaceName = SPACE.name,
    resolution: Resolution = SPACE.resolution,
    width: Width = SPACE.width,
    classes: Classes = SPACE.num_classes,
    head_c: HeadC = None,
    candidates: Candidates = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per op.")] = False,
) -> None:
    """The unique operators a device must measure for this space."""
    space = build_space(space_options(name, resolution, width, classes, head_c, candidates))
    for key, spec in enumerate_ops(space).ops.items():
        typer.echo(spec.canonical_json() if as_json else key)


@app.command()
def export(
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for the per-op .onnx files.")],
    name: SpaceName = SPACE.name,
    resolution: Resolution = SPACE.resolution,
    width: Width = SPACE.width,
    classes: Classes = SPACE.num_classes,
    head_c: HeadC = None,
    candidates: Candidates = None,
) -> None:
    """Export every unique operator to ONNX (cached: existing files are reused)."""
    from tqdm import tqdm

    from search.space.export import ExportCache  # torch: only for the one command that exports

    space = build_space(space_options(name, resolution, width, classes, head_c, candidates))
    cache = ExportCache(output)
    specs = list(enumerate_ops(space).ops.values())
    for spec in tqdm(specs, desc="export", unit="op"):
        cache.get(spec)
    typer.echo(json.dumps({"ops": len(specs), "directory": str(output)}))


@app.command("macs-table")
def macs_table_cmd(
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the table (JSON).")],
    name: SpaceName = SPACE.name,
    resolution: Resolution = SPACE.resolution,
    width: Width = SPACE.width,
    classes: Classes = SPACE.num_classes,
    head_c: HeadC = None,
    candidates: Candidates = None,
) -> None:
    """A table that prices every op by its multiply-adds (kMAC), for `dnas search --table`: the FLOP-counter
    search to hold a device table's search against. Budgets given in "ms" then read as millions of MACs."""
    from search.tables.macs import macs_table

    space = build_space(space_options(name, resolution, width, classes, head_c, candidates))
    payload = macs_table(space)
    output.write_text(json.dumps(payload, indent=1))
    typer.echo(json.dumps({"ops": len(payload["entries"]), "unit": payload["config"]["unit"], "path": str(output)}))
