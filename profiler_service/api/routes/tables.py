from __future__ import annotations

import json
from typing import Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from profiler_service.api.deps import Id, ReaderDep, SessionDep
from profiler_service.api.routes.devices import get_device
from profiler_service.errors import Invalid
from profiler_service.schemas import TableSummary
from profiler_service.tables import compare, compare_png, find_table, list_tables, table_csv, table_payload
from profiler_service.timeutil import as_utc

router = APIRouter(tags=["latency-tables"], dependencies=[ReaderDep])

SpaceHash = Query(default=None, pattern=r"^[0-9a-f]{6,64}$", description="Only tables of this space.")


@router.get("/devices/{device_id}/latency-tables", response_model=list[TableSummary])
def versions(device_id: Id, session: SessionDep, space_hash: str | None = SpaceHash) -> list[TableSummary]:
    get_device(session, device_id)
    return [
        TableSummary(
            device_id=t.device_id,
            version=t.version,
            space_hash=t.space_hash,
            config_hash=t.config_hash,
            content_sha256=t.content_sha256,
            created_at=as_utc(t.created_at),
            entries=sum(1 for e in t.entries if not e.op_key.startswith(("probe-", "net-"))),  # ops, as served
        )
        for t in list_tables(session, device_id, space_hash)
    ]


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [c.strip().removeprefix("W/") for c in if_none_match.split(",")]
    return etag in candidates or "*" in candidates


@router.get("/devices/{device_id}/latency-tables/{version}")
def get_table(
    device_id: Id,
    version: str,
    request: Request,
    session: SessionDep,
    space_hash: str | None = SpaceHash,
    format: Literal["json", "csv"] = "json",
) -> Response:
    """One version ('latest' or a number). Versions are immutable, so the ETag is the content hash."""
    get_device(session, device_id)
    table = find_table(session, device_id, version, space_hash)
    etag = f'"{table.content_sha256}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Table-Version": str(table.version)}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    cache = request.app.state.table_cache
    body = cache.get(table.id)
    if body is None:  # versions never change, so their serialised form can be kept
        payload = table_payload(session, table)
        body = {"json": json.dumps(payload).encode(), "csv": table_csv(payload).encode()}
        cache.put(table.id, body)
    media = "text/csv" if format == "csv" else "application/json"
    return Response(body[format], media_type=media, headers=headers)


def _ref(text: str) -> tuple[int, str]:
    device, sep, version = text.partition(":")
    if not sep or not device.isdigit() or not 1 <= int(device) <= 2**31 - 1:
        raise Invalid(f"table reference {text!r} must look like DEVICE_ID:VERSION (e.g. 3:latest)")
    return int(device), version


@router.get("/latency-tables/compare")
def compare_tables(
    session: SessionDep,
    a: str = Query(description="DEVICE_ID:VERSION"),
    b: str = Query(description="DEVICE_ID:VERSION"),
    format: Literal["json", "png"] = "json",
    top: int = Query(default=20, ge=1, le=200),
) -> Response:
    """Two tables side by side: per-op latency ratio b/a, the ops that differ most first."""
    tables = []
    for ref in (a, b):
        device_id, version = _ref(ref)
        get_device(session, device_id)
        tables.append(table_payload(session, find_table(session, device_id, version)))
    result = compare(*tables)
    if format == "png":
        return Response(compare_png(result, top), media_type="image/png")
    return JSONResponse(result)
