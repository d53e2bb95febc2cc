"""Devices: the overview, one device's page, registering one (its agent token shown once), retiring one, and
starting a profiling run on it. Actions call the API's own functions after the API's own admin check."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from profiler_service.api.deps import Id, SessionDep
from profiler_service.api.routes import devices as devices_api
from profiler_service.api.routes import runs as runs_api
from profiler_service.errors import ApiError
from profiler_service.public_url import server_url
from profiler_service.schemas import DeviceCreate, RunCreate
from profiler_service.ui import views
from profiler_service.ui.auth import AdminCallerDep, CallerDep, first, read_form
from profiler_service.ui.render import UiRoute, page

router = APIRouter(route_class=UiRoute)

PLATFORMS = ("linux", "android", "ios", "macos", "windows", "other")


def _refusal(exc: ValidationError | ApiError) -> str:
    if isinstance(exc, ApiError):
        return str(exc.detail)
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


@router.get("/", include_in_schema=False)
def overview(request: Request, caller: CallerDep, session: SessionDep, retired: bool = False) -> Response:
    settings = request.app.state.settings
    rows = views.device_rows(session, settings, include_retired=retired)
    runs = views.recent_runs(session, limit=10)
    return page(
        request,
        "overview.html",
        devices=rows,
        runs=runs,
        names=views.device_names(session),
        show_retired=retired,
        window_s=views.connected_window_s(settings),
    )


@router.get("/devices/new", include_in_schema=False)
def register_form(request: Request, caller: AdminCallerDep) -> Response:
    return page(request, "device_new.html", platforms=PLATFORMS, error=None, name="", platform="linux")


@router.post("/devices", include_in_schema=False)
async def register(request: Request, caller: AdminCallerDep, session: SessionDep) -> Response:
    fields = await read_form(request, caller.csrf)
    name, platform = first(fields, "name"), first(fields, "platform", "linux")
    try:
        body = DeviceCreate(name=name, platform=platform)  # type: ignore[arg-type]
        created = await run_in_threadpool(devices_api.register, body, session)
    except (ValidationError, ApiError) as exc:
        status = exc.status_code if isinstance(exc, ApiError) else 422
        return page(
            request, "device_new.html", status, platforms=PLATFORMS, error=_refusal(exc), name=name, platform=platform
        )
    return page(request, "device_created.html", 201, device=created, server=server_url(request))


@router.get("/devices/{device_id}", include_in_schema=False)
def device_page(
    request: Request,
    device_id: Id,
    caller: CallerDep,
    session: SessionDep,
    precision: str = Query(default="", max_length=20, description="Only tables of this precision: fp32 or int8."),
) -> Response:
    return page(request, "device.html", **_device_context(request, session, device_id, precision=precision))


def _device_context(
    request: Request, session: Any, device_id: int, precision: str = "", **extra: Any
) -> dict[str, Any]:
    settings = request.app.state.settings
    device = devices_api.get_device(session, device_id)
    row = views.device_row(device, views.held_jobs(session, [device_id]).get(device_id, []), settings)
    every = views.device_tables(session, device_id)
    shown = views.precision_filter(precision)
    return {
        "row": row,
        "device": row["device"],
        "runs": views.recent_runs(session, device_id=device_id, limit=50),
        "tables": views.device_tables(session, device_id, shown) if shown else every,
        "table_count": len(every),
        "precision": shown or "",
        "precisions": views.PRECISIONS,
        "pair": views.precision_pair(every),
        "candidates": views.CANDIDATES,
        "form": extra.pop("form", views.RUN_DEFAULTS | {"candidates": list(views.CANDIDATES)}),
        "run_error": extra.pop("run_error", None),
        "window_s": views.connected_window_s(settings),
        "space_label": views.space_label,
        **extra,
    }


@router.post("/devices/{device_id}/retire", include_in_schema=False)
async def retire(request: Request, device_id: Id, caller: AdminCallerDep, session: SessionDep) -> Response:
    await read_form(request, caller.csrf)
    await run_in_threadpool(devices_api.retire, device_id, session)
    return RedirectResponse(f"/ui/devices/{device_id}", status_code=303)


def _run_form(fields: dict[str, list[str]]) -> dict[str, Any]:
    """The form's values as sent, to show them again if the run is refused."""
    form: dict[str, Any] = {k: first(fields, k, views.RUN_DEFAULTS[k]) for k in views.RUN_DEFAULTS}
    form["candidates"] = [c for c in fields.get("candidates", []) if c]
    return form


def _run_body(device_id: int, form: dict[str, Any]) -> RunCreate:
    """The API's request body, validated by the API's own model."""
    space: dict[str, Any] = {"name": "fbnet"}
    try:
        space |= {
            "resolution": int(form["resolution"]),
            "width": float(form["width"]),
            "num_classes": int(form["num_classes"]),
        }
        config = {
            "warmup": int(form["warmup"]),
            "rounds": int(form["rounds"]),
            "runs_per_round": int(form["runs_per_round"]),
            "precision": form["precision"],
        }
        anchors = int(form["anchors"])
    except ValueError as exc:
        raise ApiError(f"every field needs a number: {exc}") from None
    if not form["candidates"]:
        raise ApiError("pick at least one candidate block")
    space["candidates"] = form["candidates"]
    return RunCreate(device_id=device_id, space=space, config=config, anchors=anchors)  # type: ignore[arg-type]


@router.post("/devices/{device_id}/runs", include_in_schema=False)
async def start_run(request: Request, device_id: Id, caller: AdminCallerDep, session: SessionDep) -> Response:
    """Start a profiling run through the API's own function (exporting what is missing may take a while)."""
    form = _run_form(await read_form(request, caller.csrf))
    try:
        body = _run_body(device_id, form)
        run = await run_in_threadpool(runs_api.start, body, session, request)
    except (ValidationError, ApiError) as exc:
        status = exc.status_code if isinstance(exc, ApiError) and exc.status_code != 400 else 422
        context = await run_in_threadpool(
            _device_context,
            request,
            session,
            device_id,
            form=form,
            run_error=_refusal(exc),
        )
        return page(request, "device.html", status, **context)
    return RedirectResponse(f"/ui/runs/{run.id}", status_code=303)
