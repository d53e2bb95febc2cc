"""`dnas db ...`: apply or inspect migrations."""

from __future__ import annotations

from typing import Annotated

import typer

from db import migrate
from db.engine import default_url

app = typer.Typer(no_args_is_help=True, help="Database migrations.")

DbUrl = Annotated[str | None, typer.Option("--db", envvar="DNAS_SERVICE_DATABASE_URL", help="SQLAlchemy URL.")]


@app.command()
def upgrade(db: DbUrl = None, revision: str = "head") -> None:
    """Migrate the database up (to head by default)."""
    url = db or default_url()
    migrate.upgrade(url, revision)
    typer.echo(f"database at {migrate.current_revision(url)}")


@app.command()
def current(db: DbUrl = None) -> None:
    """The revision the database is at, and the newest one this code knows."""
    url = db or default_url()
    typer.echo(f"current: {migrate.current_revision(url)}  head: {migrate.head_revision()}")
