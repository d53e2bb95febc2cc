"""Credential-like query parameters (`?token=`, `?api_key=`, `?password=` ...) are dropped from every request
before anything sees it: the access log, the header log, the routes, and the dashboard's `next=` redirect.

No route of the service takes a credential in the query (tokens travel in `Authorization` or the session
cookie), so such a parameter is only ever a user's mistake, a token pasted into a URL, and keeping it would
copy the token into the log and into the sign-in form's next address. uvicorn writes its access line from the
request's scope when the response starts, so rewriting the scope here, outermost, keeps it out of that line.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Receive, Scope, Send

# A parameter's name, lowercased without separators, that may hold a secret.
CREDENTIAL = re.compile(r"token|passw|pwd|secret|apikey|auth|session|credential|cookie|^key$|^sig(nature)?$")


def credential_like(name: str) -> bool:
    return CREDENTIAL.search(re.sub(r"[-_.\s]", "", name.lower())) is not None


def scrubbed(query: str, depth: int = 2) -> str:
    """`query` without its credential-like parameters (the others kept, in order). A value that is itself an
    address with a query (the sign-in form's `next=/ui/runs?token=...`) is scrubbed too."""
    pairs = parse_qsl(query, keep_blank_values=True)
    kept = [(k, _inner(v, depth)) for k, v in pairs if not credential_like(k)]
    return query if kept == pairs else urlencode(kept)


def _inner(value: str, depth: int) -> str:
    path, mark, inner = value.partition("?")
    if not mark or depth == 0:
        return value
    return f"{path}?{scrubbed(inner, depth - 1)}" if inner else value


class QueryScrubMiddleware:
    """Pure ASGI and outermost: rewrites `query_string` in the scope uvicorn logs from."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query: bytes = scope.get("query_string", b"")
        if scope["type"] == "http" and query:  # parsed, so a percent-encoded name (`%74oken`) is seen too
            scope["query_string"] = scrubbed(query.decode("latin-1")).encode("latin-1")
        await self.app(scope, receive, send)
