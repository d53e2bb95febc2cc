"""`dnas models ...`: the zoo of published architectures.

torch is imported by the one command that builds a network, not here: `dnas` starts in a fraction of a second
for everything else (an agent, the service's workers, `dnas device ...`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from search.space.zoo import get_model, list_models

app = typer.Typer(no_args_is_help=True, help="Published models: list, describe, export to ONNX.")


@app.command("list")
def list_cmd() -> None:
    """Names, parameters and multiply-adds of every zoo model, beside the published figures."""
    typer.echo(f"{'name':18s} {'res':>4s} {'params':>8s} {'(paper)':>8s} {'MACs':>9s} {'(paper)':>9s}")
    for name in list_models():
        d = get_model(name).describe()
        pub = d["published"] or {"params": float("nan"), "flops": float("nan")}
        typer.echo(
            f"{name:18s} {d['resolution']:4d} {d['params'] / 1e6:7.2f}M {pub['params'] / 1e6:7.2f}M "
            f"{d['flops'] / 1e6:8.1f}M {pub['flops'] / 1e6:8.1f}M"
        )


@app.command()
def describe(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Parameters, multiply-adds, resolution and per-layer blocks of one model."""
    d = get_model(name).describe()
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    typer.echo(f"{d['name']}: {d['params'] / 1e6:.2f}M params, {d['flops'] / 1e6:.1f}M MACs at {d['resolution']}px")
    typer.echo(f"source: {d['source']}")
    for i, block in enumerate(d["arch"]):
        typer.echo(f"  layer {i:2d}: {block}")


@app.command()
def export(
    name: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the .onnx file.")],
) -> None:
    """Export one model to ONNX (fresh weights: for latency measurement, not accuracy)."""
    # torch only here: every `dnas` process imports this module, and a uvicorn worker re-imports it before it
    # can answer its supervisor's first health check.
    from search.space.export import atomic_write, export_network
    from search.space.model import build_model

    zoo = get_model(name)
    space = zoo.skeleton
    model = build_model(space, zoo.arch)
    atomic_write(output, export_network(model, (1, space.in_channels, space.resolution, space.resolution)))
    typer.echo(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")
