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
_admin_cache: tuple[float, str] | None = None


def cached_admin_hash() -> str | None:
    """The admin hash if this worker read it within ADMIN_HASH_TTL_S, without touching the database."""
    if _admin_cache is not None and time.monotonic() - _admin_cache[0] < ADMIN_HASH_TTL_S:
        return _admin_cache[1]
    return None


def admin_hash(session: Session) -> str | None:
    """The stored admin token hash. It changes only when a service starts with another configured token, so
    each worker keeps it for ADMIN_HASH_TTL_S: the hot read path (table fetches) saves a query per request."""
    global _admin_cache
    now = time.monotonic()
    if _admin_cache is not None and now - _admin_cache[0] < ADMIN_HASH_TTL_S:
        return _admin_cache[1]
    value = session.scalar(select(ServiceSetting.value).where(ServiceSetting.name == ADMIN_SETTING))
    if value is not None:
        _admin_cache = (now, value)
    return value
