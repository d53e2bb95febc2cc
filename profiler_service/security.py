"""Tokens: random, shown once, stored only as SHA-256 (they are high-entropy, so a slow hash adds nothing)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import ServiceSetting, UiSession

ADMIN_SETTING = "admin_token_sha256"


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


REVOKED_SETTING = "admin_tokens_revoked"  # newline-separated hashes of admin tokens replaced through the API
MAX_REVOKED = 100


class RevokedAdminToken(ValueError):
    """The configured admin token was revoked (rotated through the API): starting with it would bring back a
    token someone chose to end, so the service refuses to start until it is given the new one."""


def revoked_admin_hashes(session: Session) -> list[str]:
    row = session.get(ServiceSetting, REVOKED_SETTING)
    return row.value.split() if row is not None else []


def ensure_admin_token(session: Session, configured: str | None) -> str | None:
    """Store the admin token's hash; returns a newly generated token (to print once), else None.

    A configured token wins and replaces the stored hash, so rotating it is setting the variable, unless it is
    one that was revoked through the API (`POST /v1/admin-token/rotate`): then RevokedAdminToken.
    """
    row = session.get(ServiceSetting, ADMIN_SETTING)
    if configured:
        digest = hash_token(configured)
        if any(same(digest, old) for old in revoked_admin_hashes(session)):
            raise RevokedAdminToken(
                "the configured admin token was revoked (replaced through POST /v1/admin-token/rotate): "
                "set DNAS_SERVICE_ADMIN_TOKEN (or its file) to the token that replaced it, or to a new one"
            )
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


def rotate_admin_token(session: Session, current_digest: str) -> str | None:
    """Replace the admin token whose hash is `current_digest` with a new one, recorded as revoked so no restart
    brings it back. Returns the new token, or None when the admin token changed meanwhile (a concurrent
    rotation won). One guarded UPDATE: two rotations racing never both succeed."""
    token = new_token("dnas_admin")
    changed = session.execute(
        update(ServiceSetting)
        .where(ServiceSetting.name == ADMIN_SETTING, ServiceSetting.value == current_digest)
        .values(value=hash_token(token))
    ).rowcount
    if changed != 1:
        session.rollback()
        return None
    revoked = [*revoked_admin_hashes(session), current_digest][-MAX_REVOKED:]
    row = session.get(ServiceSetting, REVOKED_SETTING)
    if row is None:
        session.add(ServiceSetting(name=REVOKED_SETTING, value="\n".join(revoked)))
    else:
        row.value = "\n".join(revoked)
    session.execute(delete(UiSession).where(UiSession.token_hash == current_digest))  # its dashboard sessions
    session.commit()
    return token
