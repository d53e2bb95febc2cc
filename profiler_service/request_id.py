"""A request id in every log line and every error body, so a user's report can be matched to the logs.

The id comes from the caller's `X-Request-ID` when it is a sane token (a proxy or client may set one),
otherwise it is generated; it is echoed in the `X-Request-ID` response header.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
_SANE = re.compile(r"[A-Za-z0-9._\-]{1,64}")


def current() -> str:
    return REQUEST_ID.get()


class RequestIdMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): it wraps streaming and long-poll responses without buffering them.
    uvicorn runs each request in its own task, so the context variable is the request's alone."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id")
        rid = incoming if incoming and _SANE.fullmatch(incoming) else uuid.uuid4().hex
        REQUEST_ID.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        await self.app(scope, receive, send_with_id)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


def log_config() -> dict[str, Any]:
    """uvicorn's logging, every line with the request id (access lines are logged inside the request)."""
    handler = {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["request_id"],
               "stream": "ext://sys.stderr"}  # fmt: skip
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {
            "plain": {"format": FORMAT},
            "access": {
                "format": FORMAT.replace("%(message)s", '%(client_addr)s "%(request_line)s" %(status_code)s'),
                "()": "uvicorn.logging.AccessFormatter",
                "use_colors": False,
            },
        },
        "handlers": {"default": handler, "access": handler | {"formatter": "access"}},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
            "dnas": {"handlers": ["default"], "level": "INFO", "propagate": False},
        },
    }
