"""Every request's headers in the log (`DNAS_SERVICE_LOG_HEADERS=true`), to debug a proxy or a client.

Credentials are logged as a fingerprint, never as the value: `Authorization: Bearer sha256:<12 hex>` is the
start of the token's SHA-256, which is how the service stores it (`devices.token_hash`, `api_tokens.token_hash`),
so an operator can tell which token called without the log holding one. Cookies keep their names only. Every
other header's value is shown only when its name is on an allow-list of headers that carry no secret (what a
proxy or client sets to route, describe or trace a request); any other (`X-Api-Key`, a proxy's own secret)
is `<masked>`, since a header the service does not know may hold anything.

What the caller chose is escaped before it is logged: the path is the decoded one, so `%0d%0a` in a URL
would otherwise end the line and let the rest of the path forge a log line of its own.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from profiler_service.security import hash_token

log = logging.getLogger("dnas.service.http")

CREDENTIALS = frozenset({"authorization", "proxy-authorization"})
COOKIES = frozenset({"cookie", "set-cookie"})
SHOWN = frozenset({
    "host", "user-agent", "accept", "accept-encoding", "accept-language", "content-type", "content-length",
    "content-encoding", "transfer-encoding", "connection", "keep-alive", "te", "expect", "upgrade",
    "x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
    "x-real-ip", "forwarded", "via", "origin", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest",
    "cache-control", "pragma", "if-none-match", "if-modified-since",
})  # fmt: skip
MASKED = "<masked>"


def escaped(text: str) -> str:
    """`text` with every character outside printable ASCII as an escape (`\\r`, `\\n`, `\\x1b`, `\\u2028`):
    one request is one log line, whatever it carries."""
    if text.isascii() and text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")


def fingerprint(secret: str) -> str:
    """The start of the hash the service stores for a token, so a log line names the row it matches."""
    return "sha256:" + hash_token(secret)[:12]


def redacted(name: str, value: str) -> str:
    """A header's value as it may be logged."""
    lower = name.lower()
    if lower in CREDENTIALS:
        scheme, _, credential = value.strip().partition(" ")
        return f"{escaped(scheme)} {fingerprint(credential.strip())}" if credential else fingerprint(value)
    if lower in COOKIES:
        names = [part.split("=", 1)[0].strip() for part in value.split(";") if "=" in part]
        return "; ".join(f"{escaped(n)}=<redacted>" for n in names)
    return escaped(value) if lower in SHOWN else MASKED


class HeaderLogMiddleware:
    """Pure ASGI, inside the request id middleware: each line carries the request's id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            shown = "; ".join(
                f"{escaped(k.decode('latin-1'))}: {redacted(k.decode('latin-1'), v.decode('latin-1'))}"
                for k, v in scope["headers"]
            )
            log.info("%s %s headers: %s", escaped(scope["method"]), escaped(scope["path"]), shown)
        await self.app(scope, receive, send)
