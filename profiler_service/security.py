"""Tokens: random, shown once, stored only as SHA-256 (they are high-entropy, so a slow hash adds nothing)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import ServiceSetting

ADMIN_SETTING = "admin_token_sha256"


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def ensure_admin_token(session: Session, configured: str | None) -> str | None:
    """Store the admin token's hash; returns a newly generated token (to print once), else None.

    A configured token always wins and replaces the stored hash, so rotating it is setting the variable.
    """
    row = session.get(ServiceSetting, ADMIN_SETTING)
    if configured:
        digest = hash_token(configured)
        if row is None:
            session.add(ServiceSetting(name=ADMIN_SETTING, value=digest))
        elif not same(row.value, digest):
            row.value = digest
        session.commit()
        return None
    if row is not None:
        return None
    token = new_token("dnas_admin")
    session.add(ServiceSetting(name=ADMIN_SETTING, value=hash_token(token)))
    try:
        session.commit()
    except IntegrityError:  # another process generated one first: theirs is the token
        session.rollback()
        return None
    return token


ADMIN_HASH_TTL_S = 30.0


class AdminHashCache:
    """One database's admin token hash, as read within the last ADMIN_HASH_TTL_S. It changes only when a
    service starts with another configured token, so each worker keeps it that long: the hot read path
    (table fetches) saves a query per request, and an admin call is authorised without leaving the event loop.

    One per app, on `app.state`, never per process: two apps in one process (tests, an embedded quickstart
    beside a real service) serve two databases, and one's admin token must not open the other."""

    def __init__(self, ttl_s: float = ADMIN_HASH_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._entry: tuple[float, str] | None = None  # (when read, hash): replaced whole, so threads see either

    def cached(self) -> str | None:
        """The hash if it was read within the TTL, without touching the database."""
        entry = self._entry
        if entry is not None and time.monotonic() - entry[0] < self.ttl_s:
            return entry[1]
        return None

    def read(self, session: Session) -> str | None:
        """The stored hash: from the cache within the TTL, else from the database (and cached)."""
        cached = self.cached()
        if cached is not None:
            return cached
        value = session.scalar(select(ServiceSetting.value).where(ServiceSetting.name == ADMIN_SETTING))
        if value is not None:
            self._entry = (time.monotonic(), value)
        return value
