from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import AfterValidator, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from db.models import Calibration, LatencyTable
from profiler_service.api.deps import AdminDep, Id, ReaderDep, SessionDep
from profiler_service.api.routes.devices import get_device
from profiler_service.api.strict_json import StrictJsonRoute
from profiler_service.errors import Conflict, NotFound
from profiler_service.networks import (
    network_status,
    prepare_network,
    register_network,
    request_measurement,
    request_set,
    set_status,
)
from profiler_service.runs import resolve_space
from profiler_service.schemas import JsonObject, KiB, MeasureConfig, SpaceObject, Strict, at_most
from profiler_service.tables import of_precision
from profiler_service.timeutil import as_utc
from search.space.quantize import dtype_of

router = APIRouter(prefix="/devices/{device_id}", tags=["networks"], route_class=StrictJsonRoute)

CALIBRATION_RETRIES = 20


class NetworkRequest(Strict):
    space: SpaceObject
    arch: list[str] = Field(min_length=1, max_length=64)
    config: MeasureConfig = Field(default_factory=MeasureConfig)


class NetworkSetRequest(Strict):
    space: SpaceObject
    archs: list[list[str]] = Field(min_length=1, max_length=200)
    config: MeasureConfig = Field(default_factory=MeasureConfig)


CalibrationModel = JsonObject(64 * KiB)
FittedOn = Annotated[list[dict[str, Any]], AfterValidator(at_most(2048 * KiB))]


class CalibrationCreate(Strict):
    table_version: int = Field(ge=1, le=2**31 - 1)
    model: CalibrationModel
    metrics: CalibrationModel = Field(default_factory=dict)
    fitted_on: FittedOn = Field(default_factory=list, max_length=10_000)


@router.post("/network-measurements", status_code=201, dependencies=[AdminDep])
def measure_network(device_id: Id, body: NetworkRequest, session: SessionDep, request: Request) -> dict:
    """Measure a whole architecture end to end on the device (to check what the table predicts)."""
    device = get_device(session, device_id)
    session.commit()  # release the connection (device stays loaded) while the network exports
    settings = request.app.state.settings
    net = prepare_network(settings.artifact_dir, resolve_space(body.space), body.arch, dtype_of(body.config.precision))
    op = register_network(session, net)
    return request_measurement(session, device=device, op=op, config=body.config, max_attempts=settings.max_attempts)


@router.get("/network-measurements/{key}", dependencies=[ReaderDep])
def network_result(device_id: Id, key: str, session: SessionDep,
                   config_hash: str = Query(pattern=r"^[0-9a-f]{64}$")) -> dict:  # fmt: skip
    get_device(session, device_id)
    return network_status(session, device_id=device_id, key=key, config_hash=config_hash)


@router.post("/network-sets", status_code=201, dependencies=[AdminDep])
def measure_network_set(device_id: Id, body: NetworkSetRequest, session: SessionDep, request: Request) -> dict:
    """Measure several architectures together, in the same interleaved rounds (what `dnas validate` does).
    A set is one measurement session: every network is measured now, even if it was measured before."""
    device = get_device(session, device_id)
    session.commit()  # release the connection (device stays loaded) while the networks export
    settings = request.app.state.settings
    space = resolve_space(body.space)
    dtype = dtype_of(body.config.precision)
    nets = [prepare_network(settings.artifact_dir, space, arch, dtype) for arch in body.archs]
    ops = [register_network(session, net) for net in nets]
    set_id = request_set(session, device=device, ops=ops, config=body.config, max_attempts=settings.max_attempts)
    return set_status(session, device_id=device.id, set_id=set_id)


@router.get("/network-sets/{set_id}", dependencies=[ReaderDep])
def network_set(device_id: Id, session: SessionDep, set_id: str = Path(pattern=r"^[0-9a-f]{16}$")) -> dict:
    get_device(session, device_id)
    return set_status(session, device_id=device_id, set_id=set_id)


@router.post("/calibrations", status_code=201, dependencies=[AdminDep])
def store_calibration(device_id: Id, body: CalibrationCreate, session: SessionDep) -> dict:
    """A correction beside a raw table version; the table itself never changes."""
    get_device(session, device_id)
    table = session.scalar(
        select(LatencyTable).where(LatencyTable.device_id == device_id, LatencyTable.version == body.table_version)
    )
    if table is None:
        raise NotFound(f"device {device_id} has no latency table version {body.table_version}")
    fields = {"device_id": device_id, "table_id": table.id, "space_hash": table.space_hash, "model": body.model,
              "metrics": body.metrics, "fitted_on": body.fitted_on}  # fmt: skip
    table_version = table.version
    for _ in range(CALIBRATION_RETRIES):  # two admins at once may pick the same next version: the loser retries
        latest = session.scalar(select(func.max(Calibration.version)).where(Calibration.device_id == device_id))
        row = Calibration(version=(latest or 0) + 1, **fields)
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            continue
        return _public(row, table_version)
    raise Conflict("calibrations are being stored concurrently for this device; retry")


@router.get("/calibrations/latest", dependencies=[ReaderDep])
def latest_calibration(device_id: Id, session: SessionDep,
                       space_hash: str | None = Query(default=None, pattern=r"^[0-9a-f]{6,64}$"),
                       precision: Literal["fp32", "int8"] | None = None) -> dict:  # fmt: skip
    """The newest calibration (of a space, of tables at a precision): an fp32 calibration never corrects an
    int8 table."""
    get_device(session, device_id)
    query = select(Calibration, LatencyTable.version).join(LatencyTable, LatencyTable.id == Calibration.table_id)
    query = query.where(Calibration.device_id == device_id)
    if space_hash:
        query = query.where(Calibration.space_hash == space_hash)
    if precision:
        query = query.where(of_precision(precision))
    found = session.execute(query.order_by(Calibration.version.desc()).limit(1)).first()
    if found is None:
        scope = (f" for space {space_hash}" if space_hash else "") + (f" at precision {precision}" if precision else "")
        raise NotFound(f"device {device_id} has no calibration{scope}")
    return _public(found[0], found[1])


def _public(row: Calibration, table_version: int) -> dict:
    return {"device_id": row.device_id, "version": row.version, "table_version": table_version,
            "space_hash": row.space_hash, "model": row.model, "metrics": row.metrics,
            "created_at": as_utc(row.created_at).isoformat()}  # fmt: skip
