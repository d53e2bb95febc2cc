"""Pooled PostgreSQL connections checked for life at checkout without a round trip while they are busy.

`pool_pre_ping` sent a `SELECT 1` before every checkout: on the table-fetch path that was one database round trip
in four (a request checks out twice: the token check, then the route), a quarter of a worker's samples under
load (py-spy, docs/benchmarks.md#load). What the ping is for is a connection the server has ended (a restart
or a terminated backend): the server then sends its FATAL message and closes the socket, so an idle pooled
connection whose socket has anything to read is dead, and an idle connection with nothing to read was fine at
its last use. So: a connection used within IDLE_PING_AFTER_S is checked by polling its socket (no round trip);
one idle for longer still gets the real ping, for what a socket poll cannot see (a NAT or a proxy that dropped
the connection silently). A dead connection is replaced at checkout, as with the pre-ping: no request fails.
"""

from __future__ import annotations

import select
import time
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError

IDLE_PING_AFTER_S = 10.0
CHECKED_IN = "dnas_checked_in"  # connection record info key: monotonic time it went back to the pool


def _socket_has_data(dbapi_conn: Any) -> bool:
    """Whether the server sent anything on an idle connection: only a FATAL message, an EOF or an error can
    arrive there (pooled connections never LISTEN), each meaning the connection is over."""
    if getattr(dbapi_conn, "closed", False) or getattr(dbapi_conn, "broken", False):
        return True
    # poll, not select: a worker holding a thousand long polls has descriptors above select's FD_SETSIZE (1024),
    # where select.select raises ValueError
    poller = select.poll()
    poller.register(dbapi_conn.fileno(), select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


def check_liveness(engine: Engine, idle_ping_after_s: float = IDLE_PING_AFTER_S) -> None:
    """Install the checkout check on a PostgreSQL engine created without `pool_pre_ping`."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info[CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(CHECKED_IN)
        if since is None:  # new from connect(): just opened
            return
        if _socket_has_data(dbapi_conn):
            raise DisconnectionError("the server closed this pooled connection")
        if time.monotonic() - since > idle_ping_after_s and not engine.dialect.do_ping(dbapi_conn):
            raise DisconnectionError("the pooled connection did not answer a ping")
