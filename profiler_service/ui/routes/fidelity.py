"""Fidelity: a device's validation reports and calibrations, each with its scatter and error figures."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from profiler_service.api.deps import MAX_ID, Id, SessionDep
from profiler_service.api.routes import devices as devices_api
from profiler_service.fidelity import get_calibration, get_validation, list_calibrations, list_validations
from profiler_service.ui import views
from profiler_service.ui.auth import CallerDep
from profiler_service.ui.render import UiRoute, page

router = APIRouter(route_class=UiRoute)


@router.get("/devices/{device_id}/fidelity", include_in_schema=False)
def fidelity_page(
    request: Request,
    device_id: Id,
    caller: CallerDep,
    session: SessionDep,
    report: int | None = Query(default=None, ge=1, le=MAX_ID),
    calibration: int | None = Query(default=None, ge=1, le=MAX_ID),
) -> Response:
    """The newest report and calibration unless others are picked."""
    device = devices_api.get_device(session, device_id)
    reports = list(reversed(list_validations(session, device_id=device_id, after=0, limit=1000)))
    calibrations = list(reversed(list_calibrations(session, device_id=device_id, after=0, limit=1000)))
    chosen = chosen_cal = None
    if report or reports:
        chosen = get_validation(session, device_id=device_id, validation_id=report or reports[0]["id"])
    if calibration or calibrations:
        chosen_cal = get_calibration(session, device_id=device_id, version=calibration or calibrations[0]["version"])
    return page(
        request,
        "fidelity.html",
        device=devices_api.public(device),
        reports=reports,
        calibrations=calibrations,
        report=chosen,
        report_figures=views.figure_rows(chosen["report"]) if chosen else [],
        report_scatter=views.validation_scatter(chosen["report"]) if chosen else None,
        calibration=chosen_cal,
        calibration_figures=views.figure_rows(chosen_cal["metrics"]) if chosen_cal else [],
        calibration_scatter=views.calibration_scatter(session, request.app.state, chosen_cal) if chosen_cal else None,
    )
