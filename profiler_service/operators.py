"""Operators known to the service and their ONNX files, exported once per op key."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from db.models import Operator
from search.space.export import ExportCache, sha256_file
from search.space.opspec import OpSpec


def insert_ignore(session: Session, model: type, rows: list[dict]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING: concurrent workers may register the same row."""
    if not rows:
        return
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(model).values(rows).on_conflict_do_nothing())


def ensure_operators(session: Session, cache: ExportCache, specs: list[OpSpec]) -> None:
    """Export what is missing and record every op with its checksum (the agent verifies the download). An op
    first recorded without a file (by a table import) gets its checksum now."""
    known = {
        key: sha
        for key, sha in session.execute(
            select(Operator.key, Operator.onnx_sha256).where(Operator.key.in_([s.key for s in specs]))
        )
    }
    rows = []
    for spec in specs:
        path = cache.get(spec)
        if known.get(spec.key):
            continue
        row = {"key": spec.key, "spec": spec.to_dict(), "onnx_sha256": sha256_file(path),
               "onnx_bytes": path.stat().st_size}  # fmt: skip
        if spec.key in known:
            session.execute(
                update(Operator)
                .where(Operator.key == spec.key, Operator.onnx_sha256.is_(None))
                .values(onnx_sha256=row["onnx_sha256"], onnx_bytes=row["onnx_bytes"])
            )
        else:
            rows.append(row)
    insert_ignore(session, Operator, rows)


def model_path(cache: ExportCache, spec: OpSpec) -> Path:
    """The op's ONNX file, re-exported if the artifact directory lost it (exports are deterministic)."""
    return cache.get(spec)
