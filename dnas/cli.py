"""The `dnas` command. `python -m dnas` and the console script run the same code."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from dnas import agent_cli, db_cli, models_cli, search_cli, service_cli, space_cli
from dnas.errors import UserError
from dnas.options import SPACE, Resolution, Width, space_options
from search.space.opspec import OpSpecError
from search.tables.client import ServiceError

app = typer.Typer(
    no_args_is_help=True, help="Hardware-aware neural architecture search.", pretty_exceptions_enable=False
)
app.add_typer(models_cli.app, name="models")
app.add_typer(space_cli.app, name="space")
app.add_typer(db_cli.app, name="db")
app.add_typer(service_cli.device_app, name="device")
app.add_typer(service_cli.table_app, name="table")
app.add_typer(agent_cli.app, name="agent")
app.command()(service_cli.serve)
app.command()(service_cli.profile)
app.command()(search_cli.search)
app.command()(search_cli.train)
app.command()(service_cli.validate)


@app.command()
def demo(
    resolution: Resolution = SPACE.resolution,
    width: Width = SPACE.width,
    out: Annotated[Path | None, typer.Option(help="Output directory (default: a temp dir).")] = None,
) -> None:
    """Smoke-test the toolchain: expand a space, export and run every op once, show the zoo."""
    from dnas.demo import run_demo

    space_options(resolution=resolution, width=width)  # the bounds every command holds a space to
    summary = run_demo(resolution, width, out)
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option(help="Where the report, pictures and models go.")] = Path("dnas-quickstart"),
    search_epochs: Annotated[int, typer.Option(help="Search epochs (first one trains weights only).")] = 4,
    train_epochs: Annotated[int, typer.Option(help="Retraining epochs for each network.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    precision: Annotated[
        str,
        typer.Option(
            help="fp32, or int8: profile, search and measure int8 (QDQ) networks, and report their int8 accuracy."
        ),
    ] = "fp32",
) -> None:
    """The whole job on this host: profile, fetch the table, search, retrain, measure, report."""
    import logging

    from dnas.quickstart import echo, print_summary
    from search.pipeline.quickstart import run_quickstart

    if precision not in ("fp32", "int8"):
        raise UserError(f"--precision must be fp32 or int8, not {precision!r}")
    logging.basicConfig(level=logging.WARNING)
    result = run_quickstart(out, search_epochs=search_epochs, train_epochs=train_epochs, seed=seed,
                            precision=precision, echo=echo)  # fmt: skip
    print_summary(result)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 1."""
    try:
        app()
    except (UserError, OpSpecError, ServiceError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
