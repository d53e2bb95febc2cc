"""Signing in and out. The sign-in form is CSRF-protected too (a cookie of its own, checked on POST), so no
other site can sign a browser in with a token of its choosing; failed sign-ins are limited per address
(ui/throttle.py), and signing out deletes the session on the server."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from profiler_service.api.deps import token_role
from profiler_service.errors import ApiError, Forbidden
from profiler_service.query_scrub import scrubbed
from profiler_service.security import hash_token
from profiler_service.ui.auth import (
    COOKIE,
    LOGIN_COOKIE,
    LOGIN_SECONDS,
    SESSION_SECONDS,
    WHY,
    CallerDep,
    client_address,
    cookie_args,
    csrf_token,
    end_session,
    first,
    new_secret,
    read_form,
    start_session,
)
from profiler_service.ui.render import UiRoute, page
from profiler_service.ui.throttle import SignInThrottle

router = APIRouter(route_class=UiRoute)


class TooManyFailures(ApiError):
    status_code = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-ins from this address; try again in {retry_after} s")
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


def safe_next(target: str) -> str:
    """Only a dashboard path: never another site (an open redirect), never a scheme-relative URL, and never a
    credential-like query parameter (a pasted `?token=` is not carried on)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/ui/") or target.startswith("//"):
        return "/ui/"
    return urlunsplit(("", "", parts.path, scrubbed(parts.query), ""))


def throttle(request: Request) -> SignInThrottle:
    """This app's failure counts (one per app, so two apps in one process never share them)."""
    state = request.app.state
    if not hasattr(state, "sign_in_throttle"):
        state.sign_in_throttle = SignInThrottle(state.settings.sign_in_failures)
    return state.sign_in_throttle


def _form(
    request: Request, status: int = 200, error: str | None = None, next_: str = "/ui/", why: str = ""
) -> Response:
    secret = request.cookies.get(LOGIN_COOKIE) or new_secret()
    response = page(
        request,
        "login.html",
        status,
        csrf=csrf_token("login|" + secret),
        next=safe_next(next_),
        error=error,
        why=WHY.get(why),
    )
    response.set_cookie(LOGIN_COOKIE, secret, **cookie_args(request, LOGIN_SECONDS))
    return response


@router.get("/login", include_in_schema=False)
def login_form(request: Request, next: str = "/ui/", why: str = "") -> Response:
    return _form(request, next_=next[:2000], why=why)


@router.post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    address = client_address(request)
    limits = throttle(request)
    wait = limits.retry_after(address)
    if wait is not None:  # before the form is read or the database asked: a refused guess costs nothing
        raise TooManyFailures(wait)
    secret = request.cookies.get(LOGIN_COOKIE)
    if not secret:  # no form was fetched: there is no CSRF token this post could match
        raise Forbidden("sign-in refused: the sign-in form's cookie is missing (expired, or cookies are blocked); "
                        "reload /ui/login and send it again")  # fmt: skip
    fields = await read_form(request, csrf_token("login|" + secret))
    token, target = first(fields, "token"), safe_next(first(fields, "next", "/ui/"))
    if not token:
        return _form(request, 422, "enter a token", target)
    digest = hash_token(token)
    role = await token_role(request, digest)
    if role is None:
        limits.failed(address)
        return _form(request, 401, "that is not a valid token (never issued, revoked or rotated)", target)
    if role == "agent":
        limits.failed(address)
        return _form(
            request,
            403,
            "that is a device's agent token: it only measures. Sign in with the admin token or a reader token.",
            target,
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, await start_session(request, digest), **cookie_args(request, SESSION_SECONDS))
    response.delete_cookie(LOGIN_COOKIE, path="/ui")
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request, caller: CallerDep) -> Response:
    await read_form(request, caller.csrf)
    cookie = request.cookies.get(COOKIE)
    if caller.csrf is not None and cookie:  # a session, not a Bearer caller: end it on the server
        await end_session(request, cookie)
    response = RedirectResponse("/ui/login?why=signed-out", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response
