"""Named dependencies: the database session and the three kinds of caller (admin, agent, reader)."""

from __future__ import annotations

from collections.abc import AsyncIterator
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


async def get_session(request: Request) -> AsyncIterator[Session]:
    """Closed on the event loop, not in the thread pool: a request that finished must be able to return its
    connection even when every pool thread is busy, or the pool and the threads wait on each other."""
    session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.close()


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
    allowed = _is_admin(session, token)
    session.rollback()  # end the read: no connection is held while the request waits for its next thread
    if not allowed:
        raise Forbidden("this call needs the admin token; the token sent is not it")


def require_reader(session: SessionDep, creds: Credentials) -> None:
    """Reading devices, runs and tables: the admin token or a reader token (`POST /v1/tokens`)."""
    token = _token(creds, "reader or admin")
    allowed = _is_admin(session, token) or session.scalar(
        select(ApiToken.id).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    )
    session.rollback()  # end the read before the next thread hop
    if not allowed:
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
    session.commit()  # ends the transaction either way: no connection held between thread hops
    return device


AdminDep = Depends(require_admin)
ReaderDep = Depends(require_reader)
AgentDep = Annotated[Device, Depends(require_agent)]


MAX_ID = 2**31 - 1
# Ids beyond what the database stores are refused as 422, never passed to SQL (they overflow).
Id = Annotated[int, Path(ge=1, le=MAX_ID, description="A positive id.")]
