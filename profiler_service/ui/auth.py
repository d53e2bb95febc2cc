"""Who is looking at the dashboard: a server-side session, or `Authorization: Bearer` (scripts, tests).

The cookie holds a random secret and nothing else; the service keeps only its SHA-256 in `ui_sessions`, with
the token digest it signed in with and its expiry. Why a server-side session rather than a signed cookie with
its key in a file: a database reader finds no key and no secret, so cannot make a session (the signed cookie's
key sat beside the token hashes); signing out deletes the row, which ends the session on every worker at once
(a signed cookie stays valid until it expires unless the server keeps a list of ended ones, which is server
state anyway); and there is no key file for every host of a multi-host service to share and back up. The cost
is one indexed query per dashboard page, beside the page's own.

Each request then decides through the API's own check (`deps.authorise`), so a revoked reader token or a
replaced admin token ends its sessions at once, and nothing a reader cannot do through the API is possible
here. The cookie is HttpOnly and SameSite=Strict; every form carries a CSRF token derived from the session's
secret, and a POST another site sent is refused (`check_origin`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from fastapi import Depends, Request
from sqlalchemy import delete, select
from starlette.concurrency import run_in_threadpool

from db.models import UiSession
from profiler_service.api.deps import Role, authorise, role_of, token_role
from profiler_service.errors import ApiError, Forbidden, Unauthorized
from profiler_service.public_url import public_origin, secure_cookies
from profiler_service.security import hash_token, same
from profiler_service.timeutil import utcnow

COOKIE = "dnas_session"
LOGIN_COOKIE = "dnas_login"  # a pre-session CSRF secret, so even the sign-in form cannot be posted cross-site
SESSION_SECONDS = 12 * 3600
LOGIN_SECONDS = 3600
MAX_FORM_FIELDS = 64

# Why the browser was sent to the sign-in form: the query names a key, the page shows only these fixed texts,
# so no link can make the service's own page say what its author chose.
WHY = {
    "ended": "Your session ended; sign in again.",
    "invalid": "The token of your session is no longer valid (revoked or replaced); sign in again.",
    "signed-out": "Signed out.",
}


class SignInNeeded(Exception):
    """No session (or one that ended): pages send the browser to the sign-in form, which says why (a WHY key)."""

    def __init__(self, why: str = "") -> None:
        super().__init__(why)
        self.why = why


class BadForm(ApiError):
    status_code = 400


def cookie_args(request: Request, max_age: int | None) -> dict[str, Any]:
    """Every dashboard cookie's attributes, in one place (a proxy-aware `secure` belongs here)."""
    return {"httponly": True, "samesite": "strict", "secure": secure_cookies(request), "path": "/ui",
            "max_age": max_age}  # fmt: skip


def client_address(request: Request) -> str:
    """The address a request came from, as the sign-in limit counts it (a proxy-aware one belongs here)."""
    return request.client.host if request.client else "-"


def _mac(key: str, *parts: str) -> str:
    return hmac.new(key.encode(), "|".join(parts).encode(), hashlib.sha256).hexdigest()


def csrf_token(secret: str) -> str:
    """A form's CSRF token, keyed by the session's secret (or the sign-in form's cookie): only a page that
    could read the HttpOnly cookie's value, or was served with it, can know it; the database holds neither."""
    return _mac(secret, "csrf")


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _start(sessions: Any, digest: str) -> str:
    secret = new_secret()
    now = utcnow()
    with sessions() as session:
        session.execute(delete(UiSession).where(UiSession.expires_at < now))  # ended sessions leave no rows
        session.add(UiSession(id_hash=hash_token(secret), token_hash=digest, created_at=now,
                              expires_at=now + timedelta(seconds=SESSION_SECONDS)))  # fmt: skip
        session.commit()
    return secret


async def start_session(request: Request, digest: str) -> str:
    """A new session for the token with this digest; returns the cookie's secret (kept nowhere else)."""
    return await run_in_threadpool(_start, request.app.state.sessionmaker, digest)


def _end(sessions: Any, secret: str) -> None:
    with sessions() as session:
        session.execute(delete(UiSession).where(UiSession.id_hash == hash_token(secret)))
        session.commit()


async def end_session(request: Request, secret: str) -> None:
    """Sign out on the server: the row goes, so the cookie opens nothing on any worker, even if it was saved."""
    await run_in_threadpool(_end, request.app.state.sessionmaker, secret)


def _lookup(sessions: Any, secret: str) -> tuple[str, Role | None] | None:
    with sessions() as session:
        digest = session.scalar(
            select(UiSession.token_hash).where(UiSession.id_hash == hash_token(secret), UiSession.expires_at > utcnow())
        )
        role = role_of(session, digest) if digest is not None else None
        session.rollback()
    return None if digest is None else (digest, role)


@dataclass(frozen=True)
class Caller:
    """Who sent a dashboard request. `csrf` is None for a Bearer caller: a header a browser never adds by
    itself needs no CSRF token."""

    digest: str
    role: Literal["admin", "reader"]
    csrf: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send 'Authorization: Bearer <token>', or sign in at /ui/login")
    return token.strip()


async def current_caller(request: Request) -> Caller:
    """A reader or the admin, decided by the API's own check; an agent token is refused (403)."""
    token = _bearer(request)
    if token is not None:
        digest, csrf = hash_token(token), None
        role = await token_role(request, digest)
    else:
        cookie = request.cookies.get(COOKIE)
        found = await run_in_threadpool(_lookup, request.app.state.sessionmaker, cookie) if cookie else None
        if found is None:
            raise SignInNeeded("ended" if cookie else "")
        (digest, role), csrf = found, csrf_token(cookie)  # type: ignore[arg-type]
    if role is None:
        if token is None:
            raise SignInNeeded("invalid")
        raise Unauthorized("the token sent is not a valid token (never issued, revoked or rotated)")
    if role == "agent":
        raise Forbidden("a device's agent token cannot read the dashboard: use the admin token or a reader token")
    await authorise(request, digest, "reader")  # the API's rule for reading, whatever role_of said
    caller = Caller(digest=digest, role=role, csrf=csrf)
    request.state.ui_caller = caller
    return caller


async def admin_caller(request: Request, caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
    """The admin, by the API's own check: a reader gets the 403 page with the API's reason."""
    await authorise(request, caller.digest, "admin")
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]
AdminCallerDep = Annotated[Caller, Depends(admin_caller)]


SAME_ORIGIN_FETCH = ("same-origin", "none")  # `none`: the user's own navigation (typed, bookmarked)


def check_origin(request: Request) -> None:
    """Refuse a POST another site made the browser send, as Go's net/http CrossOriginProtection decides:
    `Sec-Fetch-Site` where the browser sends it (every current one does); else the `Origin` header, which
    must name this host (`Origin: null`, from a sandboxed frame or a data: URL, names none); a request with
    neither came from no browser, and a script's request needs a token of its own anyway."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        if fetch_site.lower() in SAME_ORIGIN_FETCH:
            return
        raise Forbidden(f"cross-site request refused (Sec-Fetch-Site: {fetch_site[:20]}): this form must be sent "
                        "from the dashboard itself")  # fmt: skip
    origin = request.headers.get("origin")
    if (
        origin is not None
        and origin != public_origin(request)
        and urlsplit(origin).netloc != request.headers.get("host")
    ):  # the public URL's origin is ours whatever Host the proxy in front sent
        raise Forbidden("cross-site request refused: this form must be sent from the dashboard itself")


async def read_form(request: Request, expected_csrf: str | None) -> dict[str, list[str]]:
    """The form's fields (urlencoded, as every dashboard form sends them), after the CSRF and Origin checks."""
    check_origin(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise BadForm("dashboard forms are sent as application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl((await request.body()).decode(), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise BadForm(f"not a form (or more than {MAX_FORM_FIELDS} fields)") from None
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        fields.setdefault(name, []).append(value)
    if expected_csrf is not None:
        sent = fields.get("csrf", [""])[0]
        if not same(sent, expected_csrf):
            raise Forbidden("the form's CSRF token is missing or stale: reload the page and send it again")
    return fields


def first(fields: dict[str, list[str]], name: str, default: str = "") -> str:
    return fields.get(name, [default])[0].strip()
