"""Announcing, inside the transaction that made the change, that a device has work or that a device changed.

PostgreSQL delivers a `NOTIFY` when (and only if) its transaction commits, so a listener never hears of jobs
a rollback undid and never hears before the jobs are visible to its claim. Identical notifications of one
transaction are folded into one. SQLite has no such thing: there the long polls poll
(profiler_service/wakeups.py).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

JOBS_CHANNEL = "dnas_jobs"  # payload: the device id whose jobs became runnable
DEVICES_CHANNEL = "dnas_devices"  # payload: the device id whose token or retirement changed
TABLES_CHANNEL = "dnas_tables"  # payload: the device id that published a table (profiler_service/table_versions.py)
TOKENS_CHANNEL = "dnas_tokens"  # payload: "revoked"; a reader token was revoked (profiler_service/reader_tokens.py)


def _notify(session: Session, channel: str, payload: int | str) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(channel, str(payload))))


def jobs_runnable(session: Session, device_id: int) -> None:
    """Jobs of this device became runnable in the caller's transaction (queued, or given back)."""
    _notify(session, JOBS_CHANNEL, device_id)


def device_changed(session: Session, device_id: int) -> None:
    """This device's token or retirement changed in the caller's transaction: workers forget what they
    remembered of it, and its waiting long polls look again (and are refused)."""
    _notify(session, DEVICES_CHANNEL, device_id)


def tokens_changed(session: Session) -> None:
    """A reader token was revoked in the caller's transaction: every worker forgets the readers it remembered."""
    _notify(session, TOKENS_CHANNEL, "revoked")


def table_published(session: Session, device_id: int) -> None:
    """The device published a table in the caller's transaction: every worker forgets which is its latest."""
    _notify(session, TABLES_CHANNEL, device_id)
