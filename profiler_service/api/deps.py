"""Named dependencies: the database session and the three kinds of caller (admin, agent, reader)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ApiToken, Device
from profiler_service.errors import Forbidden, Unauthorized
from profiler_service.security import admin_hash, hash_token, same
from profiler_service.settings import ServiceSettings
from profiler_service.timeutil import as_utc, utcnow

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <token>")


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _token(creds: HTTPAuthorizationCredentials | None, role: str) -> str:
    if creds is None or not creds.credentials:
        raise Unauthorized(f"this call needs a {role} token: send 'Authorization: Bearer <token>'")
    return creds.credentials


def _is_admin(session: Session, token: str) -> bool:
    stored = admin_hash(session)
    return stored is not None and same(stored, hash_token(token))


def require_admin(session: SessionDep, creds: Credentials) -> None:
    token = _token(creds, "admin")
    if not _is_admin(session, token):
        raise Forbidden("this call needs the admin token; the token sent is not it")


def require_reader(session: SessionDep, creds: Credentials) -> None:
    """Reading devices, runs and tables: the admin token or a reader token (`POST /v1/tokens`)."""
    token = _token(creds, "reader or admin")
    if _is_admin(session, token):
        return
    found = session.scalar(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    )
    if found is None:
        raise Forbidden("this call needs a reader or admin token; the token sent is neither (agent tokens can't read)")


def require_agent(session: SessionDep, creds: Credentials) -> Device:
    token = _token(creds, "device agent")
    device = session.scalar(select(Device).where(Device.token_hash == hash_token(token)))
    if device is None:
        raise Forbidden("this call needs a device's agent token (issued when the device was registered)")
    if device.retired_at is not None:
        raise Forbidden(f"device {device.id} ({device.name}) is retired; its agent may not take jobs")
    now = utcnow()
    seen = as_utc(device.last_seen_at)
    if seen is None or now - seen > timedelta(seconds=30):  # bounded write rate from polling agents
        device.last_seen_at = now
        session.commit()
    return device


AdminDep = Depends(require_admin)
ReaderDep = Depends(require_reader)
AgentDep = Annotated[Device, Depends(require_agent)]


MAX_ID = 2**31 - 1
# Ids beyond what the database stores are refused as 422, never passed to SQL (they overflow).
Id = Annotated[int, Path(ge=1, le=MAX_ID, description="A positive id.")]
