from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from db.models import Device
from profiler_service import notify
from profiler_service.api.deps import AdminDep, Id, ReaderDep, SessionDep
from profiler_service.api.pagination import After, Limit, paginated
from profiler_service.api.strict_json import StrictJsonRoute
from profiler_service.errors import Conflict, NotFound
from profiler_service.imports import refuse_if_imported
from profiler_service.lifecycle import cancel_device_work
from profiler_service.schemas import DeviceCreate, DeviceCreated, DevicePublic, DeviceUpdate
from profiler_service.security import hash_token, new_token
from profiler_service.timeutil import utcnow

router = APIRouter(prefix="/devices", tags=["devices"], route_class=StrictJsonRoute)


def public(device: Device) -> DevicePublic:
    return DevicePublic.model_validate(device, from_attributes=True)


def get_device(session, device_id: Id) -> Device:  # type: ignore[no-untyped-def]
    device = session.get(Device, device_id)
    if device is None:
        raise NotFound(f"device {device_id} does not exist")
    return device


@router.post("", status_code=201, response_model=DeviceCreated, dependencies=[AdminDep])
def register(body: DeviceCreate, session: SessionDep) -> DeviceCreated:
    """Register a measurement target; the agent token in the answer is shown only this once."""
    token = new_token("dnas_agent")
    device = Device(name=body.name, platform=body.platform, properties=body.properties, token_hash=hash_token(token))
    session.add(device)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a device named {body.name!r} already exists; pick another name") from None
    return DeviceCreated(**public(device).model_dump(), agent_token=token)


@router.get("", response_model=list[DevicePublic], dependencies=[ReaderDep])
def list_devices(session: SessionDep, request: Request, response: Response, include_retired: bool = False,
                 after: After = 0, limit: Limit = 100) -> list[DevicePublic]:  # fmt: skip
    """Devices by id, `limit` at a time after the id `after` (the `Link` header has the next page)."""
    query = select(Device).where(Device.id > after).order_by(Device.id).limit(limit)
    if not include_retired:
        query = query.where(Device.retired_at.is_(None))
    rows = [public(d) for d in session.scalars(query)]
    return paginated(rows, request, response, limit, cursor=lambda d: d.id)


@router.get("/{device_id}", response_model=DevicePublic, dependencies=[ReaderDep])
def show(device_id: Id, session: SessionDep) -> DevicePublic:
    return public(get_device(session, device_id))


@router.patch("/{device_id}", response_model=DevicePublic, dependencies=[AdminDep])
def update(device_id: Id, body: DeviceUpdate, session: SessionDep) -> DevicePublic:
    """Rename, or replace the properties, or both. Published table versions keep the name they were
    published with (their bytes never change); the current name is here."""
    device = get_device(session, device_id)
    if body.name is not None:
        device.name = body.name
    if body.properties is not None:
        device.properties = body.properties
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a device named {body.name!r} already exists") from None
    return public(device)


@router.post("/{device_id}/rotate-token", response_model=DeviceCreated, dependencies=[AdminDep],
             responses={409: {"description": "The device is an imported table: it has no agent."}})  # fmt: skip
def rotate_token(device_id: Id, session: SessionDep) -> DeviceCreated:
    """A new agent token, shown once; the old one stops working at once (401). Leases the device holds stay
    valid under their lease tokens, so an agent restarted with the new token loses no work."""
    device = get_device(session, device_id)
    refuse_if_imported(device, "be given an agent token")
    token = new_token("dnas_agent")
    device.token_hash = hash_token(token)
    notify.device_changed(session, device.id)  # workers forget the old token at the commit
    session.commit()
    return DeviceCreated(**public(device).model_dump(), agent_token=token)


@router.post("/{device_id}/retire", response_model=DevicePublic, dependencies=[AdminDep])
def retire(device_id: Id, session: SessionDep) -> DevicePublic:
    """Stop a device taking jobs: its running runs and unfinished jobs are cancelled. Its measurements and
    tables stay readable."""
    device = get_device(session, device_id)
    if device.retired_at is None:
        device.retired_at = utcnow()
        cancel_device_work(session, device.id, reason=f"device {device.id} ({device.name}) retired")
        notify.device_changed(session, device.id)
        session.commit()
    return public(device)
