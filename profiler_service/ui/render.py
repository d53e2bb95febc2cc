"""Rendering: the Jinja2 environment, the headers every page carries, and the route class that turns the API's
errors into pages (a reader who tries an admin action sees a 403 page with the API's own reason)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute

from profiler_service import request_id
from profiler_service.errors import ApiError
from profiler_service.ui.auth import WHY, SignInNeeded

HERE = Path(__file__).parent
STATIC = HERE / "static"

# Nothing from another origin, no inline script or style: the dashboard runs on lab networks without internet,
# and a value that slipped through escaping could not run anyway.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # pages can show a token once; none is kept by the browser or a proxy
}


@cache
def static_url(name: str) -> str:
    """A static file's path with its content hash, so a new release is never served from a stale cache."""
    digest = hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]
    return f"/ui/static/{name}?v={digest}"


def _us(value: Any, digits: int = 1) -> str:
    """Microseconds for people: 812.3 us, 4.21 ms."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value / 1000:.2f} ms"
    return f"{value:.{digits}f} us"


def _num(value: Any, fmt: str = ".2f") -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    return format(value, fmt)


def _pct(value: Any, digits: int = 1, signed: bool = False) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:+.{digits}f}%" if signed else f"{value:.{digits}f}%"


def _share(value: Any) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:.0%}"


def _when(value: Any) -> str:
    """A timestamp as UTC, to the second, with the ISO form in a machine-readable attribute elsewhere."""
    if value is None:
        return "-"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the page's test instead of rendering blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static"] = static_url
    env.filters.update(us=_us, num=_num, pct=_pct, share=_share, when=_when, ago=_ago, urlquote=quote)
    return env


ENV = _environment()


def page(request: Request, template: str, http_status: int = 200, **context: Any) -> HTMLResponse:
    caller = getattr(request.state, "ui_caller", None)
    body = ENV.get_template(template).render(request=request, viewer=caller, path=request.url.path, **context)
    return HTMLResponse(body, status_code=http_status)


TITLES = {
    400: "Bad request",
    401: "Not signed in",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    413: "Too large",
    422: "Not accepted",
    429: "Too many attempts",
    503: "Unavailable",
}


def error_page(request: Request, status: int, detail: Any) -> HTMLResponse:
    if not isinstance(detail, str):  # FastAPI's list of refused fields: one line each
        detail = "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in detail)
    response = page(
        request,
        "error.html",
        status,
        status=status,
        title=TITLES.get(status, "Error"),
        detail=detail,
        request_id=request_id.current(),
    )
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def sign_in_redirect(request: Request, why: str) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    query = f"next={quote(target)}" + (f"&why={quote(why)}" if why else "")
    return RedirectResponse(f"/ui/login?{query}", status_code=303)


class UiRoute(APIRoute):
    """Every dashboard route: errors become pages (with the API's own message), no session sends the browser to
    the sign-in form, and every answer carries the security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def ui_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInNeeded as exc:
                if request.method != "GET":
                    response = error_page(request, 401, WHY.get(exc.why, "Sign in first, at /ui/login."))
                else:
                    response = sign_in_redirect(request, exc.why)
            except ApiError as exc:
                response = error_page(request, exc.status_code, exc.detail)
                for name, value in (exc.headers or {}).items():  # Retry-After of a 429, for one
                    response.headers.setdefault(name, value)
            except RequestValidationError as exc:
                response = error_page(request, 422, list(exc.errors()))
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return ui_handler
