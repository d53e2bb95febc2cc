"""A table version (space, context, rule, heatmap, every op), its downloads, and comparing two versions."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from profiler_service.api.deps import Id, SessionDep
from profiler_service.api.routes import devices as devices_api
from profiler_service.api.routes import tables as tables_api
from profiler_service.compare import compare
from profiler_service.tables import find_table_id
from profiler_service.ui import views
from profiler_service.ui.auth import CallerDep
from profiler_service.ui.render import UiRoute, page

router = APIRouter(route_class=UiRoute)


@router.get("/devices/{device_id}/tables/{version}", include_in_schema=False)
def table_page(request: Request, device_id: Id, version: str, caller: CallerDep, session: SessionDep) -> Response:
    device = devices_api.get_device(session, device_id)
    payload = views.table_payload(session, request.app.state, device_id, version)
    versions = views.device_tables(session, device_id)
    return page(
        request,
        "table.html",
        view=views.table_view(payload),
        device=devices_api.public(device),
        versions=versions,
        space_label=views.space_label,
    )


@router.get("/devices/{device_id}/tables/{version}/download", include_in_schema=False)
def download(
    request: Request,
    device_id: Id,
    version: str,
    caller: CallerDep,
    session: SessionDep,
    format: str = Query(default="json", pattern="^(json|csv)$"),
) -> Response:
    """The version's published bytes, exactly as the API serves them, as a file to save."""
    devices_api.get_device(session, device_id)
    table_id, number = find_table_id(session, device_id, version)
    cached = request.app.state.table_cache.get_or_build(table_id, lambda: tables_api.cached_table(session, table_id))
    rep = cached.csv if format == "csv" else cached.json
    name = f"device-{device_id}-table-v{number}.{format}"
    return Response(
        rep.body,
        media_type="text/csv" if format == "csv" else "application/json",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "ETag": rep.etag,
            "Cache-Control": "private, no-cache",
        },
    )


@router.get("/compare", include_in_schema=False)
def compare_page(
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    a: str = Query(default="", max_length=32),
    b: str = Query(default="", max_length=32),
) -> Response:
    """Two tables side by side: the API's comparison (per-op ratio b / a) drawn as an interactive chart and,
    for tables of one space (one device's fp32 and int8 tables), as a map of the ratio per layer and family."""
    choices = views.all_tables(session)
    result, extra = None, {}
    if a and b:
        table_a, table_b = tables_api.compared_tables(session, request, a, b)
        result = compare(table_a, table_b)
        extra = views.comparison(result, table_a)
    elif len(choices) >= 2 and not a and not b:
        a, b = choices[1]["ref"], choices[0]["ref"]
    chart = [r for r in result["ops"] if r["ratio"]] if result else []  # an op priced 0 has no ratio to draw
    return page(request, "compare.html", choices=choices, a=a, b=b, result=result, chart_data=chart, view=extra)
