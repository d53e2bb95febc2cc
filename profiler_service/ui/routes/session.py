"""Signing in and out. The sign-in form is CSRF-protected too (a cookie of its own, checked on POST), so no
other site can sign a browser in with a token of its choosing."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from profiler_service.api.deps import token_role
from profiler_service.public_url import secure_cookies
from profiler_service.security import hash_token
from profiler_service.ui.auth import (
    COOKIE,
    LOGIN_COOKIE,
    SESSION_SECONDS,
    CallerDep,
    csrf_token,
    first,
    read_form,
    session_cookie,
    signing_key,
)
from profiler_service.ui.render import UiRoute, page

router = APIRouter(route_class=UiRoute)


def safe_next(target: str) -> str:
    """Only a dashboard path: never another site (an open redirect) and never a scheme-relative URL."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/ui/") or target.startswith("//"):
        return "/ui/"
    return target


def _cookie_args(request: Request) -> dict:
    return {"httponly": True, "samesite": "strict", "secure": secure_cookies(request), "path": "/ui"}


async def _form(
    request: Request, status: int = 200, error: str | None = None, next_: str = "/ui/", why: str = ""
) -> Response:
    key = await signing_key(request)
    secret = request.cookies.get(LOGIN_COOKIE) or secrets.token_hex(16)
    response = page(
        request,
        "login.html",
        status,
        csrf=csrf_token(key, "login|" + secret),
        next=safe_next(next_),
        error=error,
        why=why,
    )
    response.set_cookie(LOGIN_COOKIE, secret, max_age=3600, **_cookie_args(request))
    return response


@router.get("/login", include_in_schema=False)
async def login_form(request: Request, next: str = "/ui/", why: str = "") -> Response:
    return await _form(request, next_=next[:2000], why=why[:300])


@router.post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    key = await signing_key(request)
    secret = request.cookies.get(LOGIN_COOKIE, "")
    fields = await read_form(request, csrf_token(key, "login|" + secret) if secret else "-")
    token, target = first(fields, "token"), safe_next(first(fields, "next", "/ui/"))
    if not token:
        return await _form(request, 422, "enter a token", target)
    digest = hash_token(token)
    role = await token_role(request, digest)
    if role is None:
        return await _form(request, 401, "that is not a valid token (never issued, revoked or rotated)", target)
    if role == "agent":
        return await _form(
            request,
            403,
            "that is a device's agent token: it only measures. Sign in with the admin token or a reader token.",
            target,
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, session_cookie(key, digest), max_age=SESSION_SECONDS, **_cookie_args(request))
    response.delete_cookie(LOGIN_COOKIE, path="/ui")
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request, caller: CallerDep) -> Response:
    await read_form(request, caller.csrf)
    response = RedirectResponse("/ui/login?why=signed+out", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response
