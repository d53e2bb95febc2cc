"""Who is looking at the dashboard: a signed session cookie, or `Authorization: Bearer` (scripts, tests).

The cookie never holds the token. Signing in checks the token once, then the cookie carries its SHA-256 (what
the service stores and the API's checks compare), an expiry and an HMAC made with a key kept in the database
(every worker shares it). Each request decides through the API's own check (`deps.authorise`), so a revoked
reader token or a replaced admin token ends its sessions at once, and nothing a reader cannot do through the
API is possible here. The cookie is HttpOnly and SameSite=Strict; every form also carries a CSRF token bound
to the session (an HMAC of the cookie), and a POST whose Origin is another site is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlsplit

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from db.models import ServiceSetting
from profiler_service.api.deps import authorise, token_role
from profiler_service.errors import ApiError, Forbidden, Unauthorized
from profiler_service.public_url import public_origin
from profiler_service.security import hash_token, same

COOKIE = "dnas_session"
LOGIN_COOKIE = "dnas_login"  # a pre-session CSRF secret, so even the sign-in form cannot be posted cross-site
SESSION_SECONDS = 12 * 3600
KEY_SETTING = "ui_session_key"
MAX_FORM_FIELDS = 64

_keys: dict[str, bytes] = {}  # per database: one process may serve several apps (tests)


class SignInNeeded(Exception):
    """No session (or one that ended): pages send the browser to the sign-in form, which says why."""

    def __init__(self, why: str = "") -> None:
        super().__init__(why)
        self.why = why


class BadForm(ApiError):
    status_code = 400


def _load_key(sessions) -> bytes:  # type: ignore[no-untyped-def]
    """The signing key, created once for the whole service (the first worker to insert it wins)."""
    with sessions() as session:
        value = session.scalar(select(ServiceSetting.value).where(ServiceSetting.name == KEY_SETTING))
        if value is None:
            session.add(ServiceSetting(name=KEY_SETTING, value=secrets.token_hex(32)))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
            value = session.scalar(select(ServiceSetting.value).where(ServiceSetting.name == KEY_SETTING))
        assert value is not None
        return bytes.fromhex(value)


async def signing_key(request: Request) -> bytes:
    where = str(request.app.state.engine.url)
    if where not in _keys:
        _keys[where] = await run_in_threadpool(_load_key, request.app.state.sessionmaker)
    return _keys[where]


def _mac(key: bytes, *parts: str) -> str:
    return hmac.new(key, "|".join(parts).encode(), hashlib.sha256).hexdigest()


def session_cookie(key: bytes, digest: str, now: float | None = None) -> str:
    expires = int((now or time.time()) + SESSION_SECONDS)
    return f"{digest}.{expires}.{_mac(key, 'session', digest, str(expires))}"


def session_digest(key: bytes, value: str, now: float | None = None) -> str | None:
    """The token digest a cookie vouches for, or None if it is forged, malformed or expired."""
    parts = value.split(".")
    if len(parts) != 3 or not parts[1].isascii() or not parts[1].isdigit():
        return None
    digest, expires, mac = parts
    if not same(mac, _mac(key, "session", digest, expires)) or int(expires) < (now or time.time()):
        return None
    return digest


def csrf_token(key: bytes, bound_to: str) -> str:
    """A form's CSRF token: an HMAC of the session cookie (or of the sign-in form's own cookie)."""
    return _mac(key, "csrf", bound_to)


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
    key = await signing_key(request)
    token = _bearer(request)
    if token is not None:
        digest, csrf = hash_token(token), None
    else:
        cookie = request.cookies.get(COOKIE)
        found = session_digest(key, cookie) if cookie else None
        if found is None:
            raise SignInNeeded("your session ended; sign in again" if cookie else "")
        digest, csrf = found, csrf_token(key, cookie)  # type: ignore[arg-type]
    role = await token_role(request, digest)
    if role is None:
        if token is None:
            raise SignInNeeded("the token of your session is no longer valid (revoked or replaced)")
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


def check_origin(request: Request) -> None:
    """A browser names the page that sent a POST; one from another site is refused whatever it carries."""
    origin = request.headers.get("origin")
    if origin and origin == public_origin(request):  # the public URL's, whatever Host the proxy in front sent
        return
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
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
