"""How far a table is trusted: calibrations (listed and read whole) and `dnas validate` reports."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from profiler_service.api.deps import MAX_ID, AdminDep, Id, ReaderDep, SessionDep
from profiler_service.api.pagination import After, Limit, paginated
from profiler_service.api.routes.devices import get_device
from profiler_service.api.strict_json import StrictJsonRoute, bulk_body
from profiler_service.fidelity import (
    get_calibration,
    get_validation,
    list_calibrations,
    list_validations,
    store_validation,
)
from profiler_service.schemas import KiB

router = APIRouter(prefix="/devices/{device_id}", tags=["fidelity"], route_class=StrictJsonRoute)

REPORT_LIMIT = 2048 * KiB
Us = Field(ge=-3.6e9, le=3.6e9, allow_inf_nan=False)


class Figures(BaseModel):
    """Error figures of predictions against measurements (search/tables/fidelity.py `errors`)."""

    model_config = ConfigDict(extra="allow")
    n: int = Field(ge=0, le=100_000)
    within_5_pct: float = Field(ge=0, le=1)
    within_10_pct: float = Field(ge=0, le=1)
    mape_pct: float = Field(ge=0, le=1e9)
    worst_error_pct: float = Field(ge=-1e9, le=1e9)
    mean_signed_error_pct: float = Field(ge=-1e9, le=1e9)
    kendall_tau: float | None = Field(ge=-1, le=1, description="null when undefined (fewer than 2 networks)")


class NetworkRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arch: list[str] = Field(max_length=64)
    predicted_us: float = Us
    measured_us: float = Field(gt=0, le=3.6e9, allow_inf_nan=False)


class ValidationIn(BaseModel):
    """A `dnas validate` report (its fidelity.json). The fields the dashboard draws are checked; the rest of
    the report (drift, calibration, seed, ...) is kept as sent, within 2 MiB."""

    model_config = ConfigDict(extra="allow")
    table_version: int = Field(ge=1, le=MAX_ID)
    rows: list[NetworkRow] = Field(min_length=1, max_length=10_000)
    raw: Figures
    noise_ceiling: Figures | None = None
    drift_adjusted: Figures | None = None
    calibrated_held_out: Figures | None = None

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        if isinstance(data, dict) and len(json.dumps(data, separators=(",", ":"))) > REPORT_LIMIT:
            raise ValueError(f"a report must serialise to at most {REPORT_LIMIT // KiB} KiB of JSON")
        return data


@router.get("/calibrations", dependencies=[ReaderDep])
def calibrations(
    device_id: Id, session: SessionDep, request: Request, response: Response, after: After = 0, limit: Limit = 100
) -> list[dict]:
    """Calibrations by version (their metrics and model, not what they were fitted on), `limit` at a time after
    version `after`."""
    get_device(session, device_id)
    rows = list_calibrations(session, device_id=device_id, after=after, limit=limit)
    return paginated(rows, request, response, limit, cursor=lambda c: c["version"])


@router.get("/calibrations/{version}", dependencies=[ReaderDep])
def calibration(device_id: Id, version: Id, session: SessionDep) -> dict:
    """One calibration whole, with the networks it was fitted on (`latest` is the route above)."""
    get_device(session, device_id)
    return get_calibration(session, device_id=device_id, version=version)


@router.post("/validations", status_code=201, dependencies=[AdminDep])
@bulk_body  # a report may be up to 2 MiB (refused above that with 422, naming the limit)
def store(device_id: Id, body: ValidationIn, session: SessionDep) -> dict:
    """Keep a `dnas validate` report beside the table version it checked (`dnas validate` uploads it)."""
    get_device(session, device_id)
    return store_validation(session, device_id=device_id, report=body.model_dump(mode="json"))


@router.get("/validations", dependencies=[ReaderDep])
def validations(
    device_id: Id,
    session: SessionDep,
    request: Request,
    response: Response,
    table_version: int | None = Query(default=None, ge=1, le=MAX_ID),
    after: After = 0,
    limit: Limit = 100,
) -> list[dict]:
    """Reports by id, without their per-network rows, `limit` at a time after the id `after`."""
    get_device(session, device_id)
    rows = list_validations(session, device_id=device_id, after=after, limit=limit, table_version=table_version)
    return paginated(rows, request, response, limit, cursor=lambda r: r["id"])


@router.get("/validations/{validation_id}", dependencies=[ReaderDep])
def validation(device_id: Id, validation_id: Id, session: SessionDep) -> dict:
    """One report whole: every network's prediction and measurement."""
    get_device(session, device_id)
    return get_validation(session, device_id=device_id, validation_id=validation_id)
