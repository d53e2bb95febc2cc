"""Request bodies are strict JSON, checked once for every route before any field is validated.

Python's `json` accepts `NaN`, `Infinity` and `-Infinity`, which are not JSON (RFC 8259): SQLite then stores
them as `null` (the value silently changes) and PostgreSQL refuses them (a 500). Strings may carry U+0000,
which PostgreSQL cannot store in text or JSON, and unpaired surrogates, which no UTF-8 column can hold.
All of these are refused here with a 422 in FastAPI's usual form, whatever the field, so a new endpoint
cannot forget the rule. Nesting is bounded too, so no body can make the service recurse deeply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

MAX_DEPTH = 32
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON; send a finite number (or null)")


def strict_loads(body: bytes | str) -> Any:
    """`json.loads` that refuses what the database could not store faithfully. Raises JSONDecodeError."""
    doc = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except ValueError as exc:  # JSONDecodeError is a ValueError; so is our refusal of NaN
        if isinstance(exc, json.JSONDecodeError):
            raise
        name = str(exc).split(" ", 1)[0]
        raise json.JSONDecodeError(str(exc), doc, max(doc.find(name), 0)) from None
    except RecursionError:
        raise json.JSONDecodeError(f"nested deeper than {MAX_DEPTH} levels", doc, 0) from None
    problem = _check(value)
    if problem:
        raise json.JSONDecodeError(problem, doc, 0)
    return value


def _check(value: Any) -> str | None:
    """Walk iteratively (no recursion): depth, and strings (keys too) the database cannot store."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                return "strings may not contain U+0000 or unpaired surrogates (they cannot be stored)"
        elif isinstance(item, dict):
            for key, sub in item.items():
                if _UNSTORABLE.search(key):
                    return "keys may not contain U+0000 or unpaired surrogates (they cannot be stored)"
                stack.append((sub, depth + 1))
        elif isinstance(item, list):
            stack.extend((sub, depth + 1) for sub in item)
    return None


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_loads(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """Every router of the service uses this route class (a test checks it), so every body is strict."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict_handler
