"""Named dependencies: the database session and the three kinds of caller (admin, agent, reader).

No token, or a token the service does not know (never issued, revoked, rotated), is 401 with
`WWW-Authenticate`; a valid token without the right for the call is 403.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import literal, select, union_all
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from db.models import ApiToken, Device, ServiceSetting
from profiler_service.errors import Forbidden, Unauthorized
from profiler_service.reader_tokens import ReaderTokens
from profiler_service.security import ADMIN_SETTING, hash_token
from profiler_service.settings import ServiceSettings
from profiler_service.timeutil import as_utc, utcnow
from profiler_service.wakeups import LAST_SEEN_EVERY_S, PollingAgent

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
Role = Literal["admin", "reader", "agent"]


def token_from(creds: HTTPAuthorizationCredentials | None, role: str) -> str:
    if creds is None or not creds.credentials:
        raise Unauthorized(f"this call needs a {role} token: send 'Authorization: Bearer <token>'", sent=False)
    return creds.credentials


def role_of(session: Session, digest: str) -> Role | None:
    """Which kind of token this digest is (None: never issued, revoked or rotated), in one indexed query.

    Read from the database, never from a timed cache: a replaced or rotated admin token stops working at once
    on every worker and every service sharing the database (a worker's cached hash kept it for 30 s), and a
    refused token costs one query, not three. Only reader tokens are remembered, and only while revocations
    are heard (profiler_service/reader_tokens.py)."""
    admin = select(literal("admin").label("role")).where(
        ServiceSetting.name == ADMIN_SETTING, ServiceSetting.value == digest
    )
    reader = select(literal("reader")).where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))
    agent = select(literal("agent")).where(Device.token_hash == digest)
    found = session.execute(union_all(admin, reader, agent).limit(1)).scalar()
    return found  # type: ignore[return-value]


def _unknown(role: str) -> Unauthorized:
    return Unauthorized(f"the token sent is not a valid token (never issued, revoked or rotated); "
                        f"this call needs a {role} token")  # fmt: skip


AUTHORISED = "dnas.authorised"  # scope key: (digest, need) this request was already granted
ALLOWED: dict[str, tuple[Role, ...]] = {"admin": ("admin",), "reader": ("admin", "reader")}


async def authorise(request: Request, digest: str, need: Literal["admin", "reader"]) -> None:
    """The one permission check, by the token's SHA-256: the API's dependencies and the dashboard (whose
    session names the digest it signed in with) both decide through it. Raises 401 or 403. A reader token
    is looked up once per worker while revocations can be heard (profiler_service/reader_tokens.py); the
    admin token every time.

    A grant is remembered in the request's scope: the route class checks before reading the body
    (api/gate.py) and the dependency then asks again without another query."""
    if request.scope.get(AUTHORISED) == (digest, need):
        return
    readers: ReaderTokens = request.app.state.readers
    if need != "reader" or not readers.holds(digest):  # a remembered reader costs no query
        stamp = readers.stamp()
        role = await run_in_threadpool(_check, request.app.state.read_sessions, digest, need)
        if role == "reader":
            readers.remember(digest, stamp)
    request.scope[AUTHORISED] = (digest, need)


async def token_role(request: Request, digest: str) -> Role | None:
    """Which kind of token this digest belongs to (None: unknown, revoked or rotated). The dashboard asks it
    to choose what to show; what it lets a caller do is decided by `authorise`."""

    def look() -> Role | None:
        with request.app.state.read_sessions() as session:
            return role_of(session, digest)

    return await run_in_threadpool(look)


async def require_admin(request: Request, creds: Credentials) -> None:
    await authorise(request, hash_token(token_from(creds, "admin")), "admin")


def _check(sessions: sessionmaker, digest: str, need: Literal["admin", "reader"]) -> Role:
    """The token's role when it may make this call; else raises 401 or 403."""
    with sessions() as session:
        role = role_of(session, digest)
        session.rollback()  # end the read: no connection is held while the request waits for its next thread
    if role in ALLOWED[need]:
        return role  # type: ignore[return-value]
    if role is None:
        raise _unknown("admin" if need == "admin" else "reader or admin")
    if need == "admin":
        raise Forbidden(f"this call needs the admin token; the token sent is a{'n' if role == 'agent' else ''} "
                        f"{role} token")  # fmt: skip
    raise Forbidden("this call needs a reader or admin token; agent tokens can't read")


async def require_reader(request: Request, creds: Credentials) -> None:
    """Reading devices, runs and tables: the admin token or a reader token (`POST /v1/tokens`)."""
    await authorise(request, hash_token(token_from(creds, "reader or admin")), "reader")


def _refuse_agent(session: Session, digest: str, device: Device | None) -> None:
    """Raise unless `device` (found by the digest) may call the agent protocol."""
    if device is None:
        role = role_of(session, digest)
        session.rollback()
        if role is None:
            raise _unknown("device agent")
        raise Forbidden(f"this call needs a device's agent token (issued when the device was registered), "
                        f"not the {role} token")  # fmt: skip
    if device.retired_at is not None:
        session.rollback()
        raise Forbidden(f"device {device.id} ({device.name}) is retired; its agent may not take jobs")


def agent_device(session: Session, digest: str) -> Device:
    """The device whose agent token has this digest, or 401/403."""
    device = session.scalar(select(Device).where(Device.token_hash == digest))
    _refuse_agent(session, digest, device)
    assert device is not None  # _refuse_agent raised otherwise
    return device


def check_agent(sessions: sessionmaker, digest: str) -> None:
    """The agent check without keeping the device: what api/gate.py asks before the body is read."""
    with sessions() as session:
        agent_device(session, digest)


def require_agent(request: Request, session: SessionDep, creds: Credentials) -> Device:
    digest = hash_token(token_from(creds, "device agent"))
    device = agent_device(session, digest)
    now = utcnow()
    seen = as_utc(device.last_seen_at)
    if seen is None or now - seen > timedelta(seconds=LAST_SEEN_EVERY_S):  # bounded write rate from polling agents
        device.last_seen_at = now
    # Ends the transaction either way (a read-only one writes nothing); commit, not rollback, because a
    # rollback would expire `device` and reload it later, on the event loop.
    session.commit()
    return device


async def require_polling_agent(request: Request, creds: Credentials) -> PollingAgent:
    """The agent of a lease call. While this worker hears device changes (PostgreSQL), a token it already knows
    costs no query: an idle fleet's calls every 20 s would otherwise be a query each. Such an agent is only
    let wait; the claim checks its token again (profiler_service/wakeups.py)."""
    digest = hash_token(token_from(creds, "device agent"))
    wakeups = request.app.state.wakeups
    known = wakeups.agent(digest)
    if known is not None:
        wakeups.seen(known.id)
        return known
    stamp = wakeups.stamp()

    def look_up() -> PollingAgent:
        with request.app.state.sessionmaker() as session:
            device = require_agent(request, session, creds)
            return PollingAgent(id=device.id, digest=digest, agent_protocol=device.agent_protocol)

    agent = await run_in_threadpool(look_up)
    wakeups.remember(agent, stamp)
    return agent


AdminDep = Depends(require_admin)
ReaderDep = Depends(require_reader)
AgentDep = Annotated[Device, Depends(require_agent)]
PollingAgentDep = Annotated[PollingAgent, Depends(require_polling_agent)]


MAX_ID = 2**31 - 1
# Ids beyond what the database stores are refused as 422, never passed to SQL (they overflow).
Id = Annotated[int, Path(ge=1, le=MAX_ID, description="A positive id.")]
