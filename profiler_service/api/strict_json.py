"""Request bodies are strict JSON, read and checked once for every route before any field is validated.

Python's `json` accepts `NaN`, `Infinity` and `-Infinity`, which are not JSON (RFC 8259), and reads a number
too large for a double (`1e999`) as infinity: SQLite then stores `Infinity` (not JSON; served back as
`null`), PostgreSQL refuses it, and an error body that echoed it could not be rendered (a 500 and a dropped
connection). Strings may carry U+0000, which PostgreSQL cannot store in text or JSON, and unpaired
surrogates, which no UTF-8 column can hold. All of these are refused here with a 422 in FastAPI's usual
list form, `loc` naming the field, whatever the route, so a new endpoint cannot forget the rule. Nesting is
bounded too, so no body can make the service recurse deeply.

The route class also orders the work so a stranger costs nothing: the token is checked first (api/gate.py),
then the body is read up to the route's limit (small, but for the agents' results), then parsed, off the
event loop when it is large.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from profiler_service.api.gate import needed_role, refuse_strangers
from profiler_service.errors import TooLarge

MAX_DEPTH = 32
PARSE_INLINE_BYTES = 64 * 1024  # larger bodies are parsed in a worker thread: the event loop keeps serving
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
Loc = tuple[str | int, ...]


class StrictJsonError(ValueError):
    """A body that is JSON but not one the service accepts; `loc` names the field, FastAPI-style."""

    def __init__(self, msg: str, loc: Loc = ()) -> None:
        super().__init__(msg)
        self.msg = msg
        self.loc = loc


class _NotFinite:
    """What parsing leaves where a number is not finite, so the walk can name the field it sits in."""

    def __init__(self, text: str) -> None:
        self.text = text[:40]

    def problem(self) -> str:
        if self.text in ("NaN", "Infinity", "-Infinity"):
            return f"{self.text} is not JSON; send a finite number (or null)"
        return f"{self.text} overflows a 64-bit float (it would be read as infinity); send a finite number"


def _float(text: str) -> float | _NotFinite:
    value = float(text)
    return value if math.isfinite(value) else _NotFinite(text)


def strict_loads(body: bytes | str) -> Any:
    """`json.loads` that refuses what the database could not store faithfully.

    Raises JSONDecodeError for text that is not JSON, StrictJsonError (with the field's `loc`) for JSON the
    service refuses."""
    doc = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    try:
        value = json.loads(body, parse_constant=_NotFinite, parse_float=_float)
    except RecursionError:
        raise StrictJsonError(f"nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # an integer past Python's digit limit
        raise json.JSONDecodeError(str(exc), doc, 0) from None
    _check(value)
    return value


def _check(value: Any) -> None:
    """Walk iteratively (no recursion): depth, numbers that are not finite, and strings (keys too) the database
    cannot store. Raises StrictJsonError naming the first bad field."""
    stack: list[tuple[Any, Loc]] = [(value, ())]
    while stack:
        item, loc = stack.pop()
        if len(loc) > MAX_DEPTH:
            raise StrictJsonError(f"nested deeper than {MAX_DEPTH} levels", loc[:MAX_DEPTH])
        if isinstance(item, _NotFinite):
            raise StrictJsonError(item.problem(), loc)
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                raise StrictJsonError("strings may not contain U+0000 or unpaired surrogates (they cannot be stored)",
                                      loc)  # fmt: skip
        elif isinstance(item, dict):
            for key, sub in item.items():
                if _UNSTORABLE.search(key):
                    raise StrictJsonError("keys may not contain U+0000 or unpaired surrogates (they cannot be "
                                          "stored)", loc)  # fmt: skip
                stack.append((sub, (*loc, key)))
        elif isinstance(item, list):
            stack.extend((sub, (*loc, i)) for i, sub in enumerate(item))


def _invalid(exc: json.JSONDecodeError | StrictJsonError) -> RequestValidationError:
    """FastAPI's own form for a body that does not parse (`json_invalid`), with the field when we know it."""
    if isinstance(exc, StrictJsonError):
        return RequestValidationError([{"type": "json_invalid", "loc": ("body", *exc.loc), "msg": exc.msg,
                                        "input": {}}])  # fmt: skip
    return RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                    "input": {}, "ctx": {"error": exc.msg}}])  # fmt: skip


def _is_json(request: Request) -> bool:
    """As FastAPI decides: no content type, or application/json or any +json type."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return not kind or kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


class StrictJsonRequest(Request):
    async def read_limited(self, limit: int) -> bytes:
        """The body, refused with 413 as soon as it is known to pass `limit` (by its Content-Length, before a
        byte is read, or by counting: chunked bodies have none)."""
        declared = self.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise TooLarge(limit)
        chunks, size = [], 0
        async for chunk in self.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge(limit)
            chunks.append(chunk)
        self._body = b"".join(chunks)
        return self._body

    async def parse(self) -> None:
        """Parse the body read, once; a large one in a worker thread."""
        body = await self.body()
        if not body or not _is_json(self):
            return
        try:
            if len(body) > PARSE_INLINE_BYTES:
                self._json = await run_in_threadpool(strict_loads, body)
            else:
                self._json = strict_loads(body)
        except (json.JSONDecodeError, StrictJsonError) as exc:
            raise _invalid(exc) from None

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            await self.parse()
        return self._json


F = TypeVar("F", bound=Callable[..., Any])


def bulk_body(endpoint: F) -> F:
    """Mark an endpoint whose bodies may be megabytes (an agent's results): it gets `max_body_bytes`, every
    other route `max_small_body_bytes`."""
    endpoint.bulk_body = True  # type: ignore[attr-defined]
    return endpoint


class StrictJsonRoute(APIRoute):
    """Every router of the service uses this route class (a test checks it), so every body is strict."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        role = needed_role(self.dependant)
        takes_body = self.body_field is not None
        bulk = getattr(self.endpoint, "bulk_body", False)

        async def strict_handler(request: Request) -> Response:
            strict = StrictJsonRequest(request.scope, request.receive)
            if role is not None:
                await refuse_strangers(strict, role)  # before a byte of the body is read
            if takes_body:
                settings = request.app.state.settings
                await strict.read_limited(settings.max_body_bytes if bulk else settings.max_small_body_bytes)
                await strict.parse()
            return await handler(strict)

        return strict_handler
