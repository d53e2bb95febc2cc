"""Every request's headers in the log (`DNAS_SERVICE_LOG_HEADERS=true`), to debug a proxy or a client.

Credentials are logged as a fingerprint, never as the value: `Authorization: Bearer sha256:<12 hex>` is the
start of the token's SHA-256, which is how the service stores it (`devices.token_hash`, `api_tokens.token_hash`),
so an operator can tell which token called without the log holding one. Cookies keep their names only.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from profiler_service.security import hash_token

log = logging.getLogger("dnas.service.http")

CREDENTIALS = frozenset({"authorization", "proxy-authorization"})
COOKIES = frozenset({"cookie", "set-cookie"})


def fingerprint(secret: str) -> str:
    """The start of the hash the service stores for a token, so a log line names the row it matches."""
    return "sha256:" + hash_token(secret)[:12]


def redacted(name: str, value: str) -> str:
    """A header's value as it may be logged."""
    lower = name.lower()
    if lower in CREDENTIALS:
        scheme, _, credential = value.strip().partition(" ")
        return f"{scheme} {fingerprint(credential.strip())}" if credential else fingerprint(value)
    if lower in COOKIES:
        names = [part.split("=", 1)[0].strip() for part in value.split(";") if "=" in part]
        return "; ".join(f"{n}=<redacted>" for n in names)
    return value


class HeaderLogMiddleware:
    """Pure ASGI, inside the request id middleware: each line carries the request's id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            shown = "; ".join(
                f"{k.decode('latin-1')}: {redacted(k.decode('latin-1'), v.decode('latin-1'))}"
                for k, v in scope["headers"]
            )
            log.info("%s %s headers: %s", scope["method"], scope["path"], shown)
        await self.app(scope, receive, send)
