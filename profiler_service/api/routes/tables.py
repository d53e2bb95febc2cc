from __future__ import annotations

import json
import re
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from db.models import LatencyTable
from profiler_service.api.deps import Id, ReaderDep, SessionDep
from profiler_service.api.pagination import After, Limit, paginated
from profiler_service.api.routes.devices import get_device
from profiler_service.api.strict_json import StrictJsonRoute
from profiler_service.compare import by_layer, compare, compare_png
from profiler_service.errors import Invalid, NotFound
from profiler_service.schemas import TableSummary
from profiler_service.table_cache import CachedTable, Representation, accepts_gzip
from profiler_service.table_versions import Found, Name
from profiler_service.tables import (
    find_table_id,
    list_tables,
    parse_version,
    stored_payload,
    table_csv,
)
from profiler_service.timeutil import as_utc
from search.tables.schema import PublishedTable

router = APIRouter(tags=["latency-tables"], dependencies=[ReaderDep], route_class=StrictJsonRoute)

SpaceHash = Query(default=None, pattern=r"^[0-9a-f]{6,64}$", description="Only tables of this space.")
Precision = Query(default=None, description="Only tables measured at this precision (fp32 or int8).")


@router.get("/devices/{device_id}/latency-tables", response_model=list[TableSummary])
def versions(
    device_id: Id,
    session: SessionDep,
    request: Request,
    response: Response,
    space_hash: str | None = SpaceHash,
    precision: Literal["fp32", "int8"] | None = Precision,
    after: After = 0,
    limit: Limit = 100,
) -> list[TableSummary]:
    """Published versions, oldest first, `limit` at a time after version `after` (the `Link` header has the
    next page)."""
    get_device(session, device_id)
    rows = [
        TableSummary(
            device_id=t.device_id,
            version=t.version,
            space_hash=t.space_hash,
            config_hash=t.config_hash,
            precision=t.config.get("precision", "fp32"),
            content_sha256=t.content_sha256,
            etag=t.payload_sha256,
            run_id=t.run_id,
            created_at=as_utc(t.created_at),
            entries=n,
        )
        for t, n in list_tables(session, device_id, space_hash, after=after, limit=limit, precision=precision)
    ]
    return paginated(rows, request, response, limit, cursor=lambda t: t.version)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2): W/"x" matches "x", so a client that got the gzip form revalidates."""
    if not if_none_match:
        return False
    candidates = [c.strip().removeprefix("W/") for c in if_none_match.split(",")]
    return etag in candidates or "*" in candidates


def cached_table(session, table_id: int) -> CachedTable:  # type: ignore[no-untyped-def]
    """A version's served forms (JSON and CSV), built from its stored bytes; also what the dashboard reads."""
    text, digest = stored_payload(session, session.get(LatencyTable, table_id))
    body = text.encode()
    csv = table_csv(json.loads(body)).encode()
    return CachedTable(json=Representation.of(body, digest), csv=Representation.of(csv))


TABLE_RESPONSES = {
    200: {"description": "The version's published JSON (or CSV)."},
    304: {"description": "Not modified."},
}


def _look_up(state, name: Name, version: str) -> tuple[Found, CachedTable]:  # type: ignore[no-untyped-def]
    """Which table `name` is, and its served forms: the database part of a fetch, in the thread pool."""
    device_id, _, space_hash, precision = name
    with state.sessionmaker() as session:
        try:
            found = find_table_id(session, device_id, version, space_hash, precision)
        except NotFound:
            get_device(session, device_id)  # the better message when the device itself does not exist
            raise
        cached = state.table_cache.get_or_build(found[0], lambda: cached_table(session, found[0]))
        session.rollback()  # nothing more to read: the connection goes back to the pool before the body is sent
    return found, cached


# The response model documents the served JSON (and is what clients parse it into); the bytes themselves are the
# ones stored at publication, sent as they are, so they are not validated or re-serialised on the way out.
@router.get("/devices/{device_id}/latency-tables/{version}", response_model=PublishedTable, responses=TABLE_RESPONSES)
async def get_table(
    device_id: Id,
    version: str,
    request: Request,
    space_hash: str | None = SpaceHash,
    precision: Literal["fp32", "int8"] | None = Precision,
    format: Literal["json", "csv"] = "json",
) -> Response:
    """One version ('latest' or a number). A version's bytes are fixed when it is published (the device's
    name as it was then included), so its ETag, the SHA-256 of those bytes, never changes; `If-None-Match`
    answers 304. Sent gzip-compressed (weak ETag) when the client accepts it. With `precision`, 'latest' is
    the newest table of that precision, and a numbered version of another precision is a 404.

    A fetch this worker answered before is answered from its memory, on the event loop: which table the
    request names (profiler_service/table_versions.py) and the table's bytes (profiler_service/table_cache.py).
    Only a miss reads the database, in the thread pool."""
    number = parse_version(version)
    state = request.app.state
    name: Name = (device_id, number, space_hash, precision)
    found = state.table_versions.get(name)
    cached = state.table_cache.get(found[0]) if found is not None else None
    if found is None or cached is None:
        stamp = state.table_versions.stamp()
        found, cached = await run_in_threadpool(_look_up, state, name, version)
        state.table_versions.remember(name, found, stamp)
    table_version = found[1]
    rep = cached.csv if format == "csv" else cached.json
    gz = accepts_gzip(request.headers.get("accept-encoding"))
    headers = {
        "ETag": f"W/{rep.etag}" if gz else rep.etag,
        "Cache-Control": "private, no-cache" if number is None else "private, max-age=31536000, immutable",
        "Vary": "Accept-Encoding",
        "X-Table-Version": str(table_version),
    }
    if _matches(request.headers.get("if-none-match"), rep.etag):
        return Response(status_code=304, headers=headers)
    media = "text/csv" if format == "csv" else "application/json"
    if gz:
        return Response(rep.gzipped, media_type=media, headers=headers | {"Content-Encoding": "gzip"})
    return Response(rep.body, media_type=media, headers=headers)


REF = re.compile(r"([0-9]{1,10}):(latest|[0-9]{1,10})(?::(fp32|int8))?")


def _ref(text: str) -> tuple[int, str, str | None]:
    found = REF.fullmatch(text)
    if not found or not 1 <= int(found[1]) <= 2**31 - 1:
        raise Invalid(
            f"table reference {text[:40]!r} must look like DEVICE_ID:VERSION[:PRECISION] (e.g. 3:latest:int8)"
        )
    parse_version(found[2])
    return int(found[1]), found[2], found[3]


def compared_tables(session: SessionDep, request: Request, a: str, b: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two published tables a comparison names, through the table cache (the dashboard reads them too)."""
    tables = []
    for ref in (a, b):
        device_id, version, precision = _ref(ref)
        get_device(session, device_id)
        table_id, _ = find_table_id(session, device_id, version, precision=precision)
        cached = request.app.state.table_cache.get_or_build(table_id, lambda t=table_id: cached_table(session, t))
        tables.append(json.loads(cached.json.body))
    session.rollback()
    return tables[0], tables[1]


@router.get("/latency-tables/compare")
def compare_tables(
    session: SessionDep,
    request: Request,
    a: str = Query(description="DEVICE_ID:VERSION[:PRECISION]", max_length=40),
    b: str = Query(description="DEVICE_ID:VERSION[:PRECISION]", max_length=40),
    format: Literal["json", "png"] = "json",
    top: int = Query(default=20, ge=1, le=200),
) -> Response:
    """Two tables side by side: per-op latency ratio b/a, the ops that differ most first. One device's fp32
    and int8 tables (`3:latest:fp32` against `3:latest:int8`) are matched op by op. The PNG adds, for tables
    of one space, the ratio per layer and block family."""
    table_a, table_b = compared_tables(session, request, a, b)
    result = compare(table_a, table_b)
    if format == "png":
        return Response(compare_png(result, top, by_layer(result, table_a)), media_type="image/png")
    return JSONResponse(result)
