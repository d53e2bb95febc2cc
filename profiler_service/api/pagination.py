"""Keyset pagination for every list: `limit` items after the cursor `after` (an id, or a table version),
oldest first. A full page carries `Link: <...>; rel="next"` (a path, like every URL the service hands
out: it is resolved against the server the client was given)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, TypeVar

from fastapi import Query, Request, Response

T = TypeVar("T")

MAX_PAGE = 1000
AFTER_HELP = "Items after this cursor: the last id (or version) of the previous page; 0 for the first page."
After = Annotated[int, Query(ge=0, le=2**31 - 1, description=AFTER_HELP)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"At most this many items (1 to {MAX_PAGE}).")]


def paginated(rows: Sequence[T], request: Request, response: Response, limit: int,
              cursor: Callable[[T], int]) -> list[T]:  # fmt: skip
    if len(rows) >= limit:
        nxt = request.url.include_query_params(after=cursor(rows[-1]), limit=limit)
        response.headers["Link"] = f'<{nxt.path}?{nxt.query}>; rel="next"'
    return list(rows)
