"""The listening connection's every step bounded in time, so one black-holed on the way is given up, not waited on.

A worker's listener (profiler_service/wakeups.py) vouches for what the worker remembers: while it is live, reader
tokens, `latest` and agent tokens are answered from memory because a change would be heard. A connection that a
NAT, a proxy or a pooler stops forwarding without closing it sends nothing and fails nothing: a step waiting on
it (the connect, a `LISTEN`, the periodic `SELECT 1`) used to wait for good, with the worker still believing
it heard every change, so a reader token revoked afterwards stayed accepted on that worker for good. So:

- Every step on the connection has a deadline (`listener_timeout_seconds`), and a step past it ends the
  connection: the listener is then lost, as when the database restarts (memories dropped, waiting calls poll,
  reconnect with backoff).
- The deadline is kept here, not by TCP: a middlebox that black-holes a connection still ACKs it, so kernel
  keepalives see nothing. They are asked for all the same (with `tcp_user_timeout`), for the cheaper cases: a
  NAT that dropped its mapping, a peer gone without a FIN.
- A step given up is not cancelled first: psycopg, cancelled mid-query, asks the server to cancel and then
  waits for the answer on the very connection that answers nothing (for good in older releases, up to 10 s
  in 3.3, whatever our deadline). The connection is closed first (`PQfinish`: a terminate message into the
  socket's buffer, no round trip), so the cancelled step has nothing left to wait on.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


class ListenerTimeout(Exception):
    """A step on the listening connection got no answer within the deadline: the connection is treated as dead."""


def listener_conninfo(url: str, timeout: float) -> str:
    """`url` (libpq's form) with a connect timeout and TCP keepalives scaled to `timeout`, unless the URL sets
    its own: a silently dropped connection is then also ended by the kernel within about `timeout` seconds."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    seconds = max(1, math.ceil(timeout))
    defaults: dict[str, Any] = {
        "connect_timeout": max(2, seconds),  # libpq's own floor
        "keepalives": 1,
        "keepalives_idle": seconds,
        "keepalives_interval": max(1, seconds // 3),
        "keepalives_count": 3,
        "tcp_user_timeout": seconds * 1000,  # ms: data sent and never acknowledged ends the connection
    }
    given = conninfo_to_dict(url)
    return make_conninfo(url, **{k: v for k, v in defaults.items() if k not in given})


async def connect(conninfo: str, timeout: float) -> Any:
    """A new autocommit connection, or ListenerTimeout: libpq's `connect_timeout` bounds each address tried,
    not a name lookup, nor all of them together."""
    import psycopg

    try:
        return await asyncio.wait_for(psycopg.AsyncConnection.connect(conninfo, autocommit=True), timeout)
    except TimeoutError:
        raise ListenerTimeout(f"connecting took over {timeout:g}s") from None


async def within(conn: Any, step: Awaitable[T], timeout: float, what: str) -> T:
    """`step` (something on `conn`, or that the listener must finish to vouch for it), or ListenerTimeout with
    `conn` closed. Cancelled from outside, `conn` is closed too, so shutting down cannot wait on it either."""
    task = asyncio.ensure_future(step)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        await abandon(conn, task)
        raise
    if not done:
        await abandon(conn, task)
        raise ListenerTimeout(f"{what} not answered within {timeout:g}s")
    return task.result()


async def abandon(conn: Any, task: asyncio.Future[Any]) -> None:
    """Close `conn`, then cancel `task` and let it unwind: with nothing left to wait on, it ends at once."""
    await conn.close()
    task.cancel()
    await asyncio.wait({task})
