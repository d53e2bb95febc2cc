"""Devices the deployment itself declares (`DNAS_SERVICE_PROVISION_DEVICES`), registered on start when
missing, with each agent token written to a file the agent reads: a fresh `docker compose up` then needs no
hand-made token, and no token travels through argv, `.env` or a log.

Runs in `prepare()`, once, before any worker starts. The file is the source of truth for the agent: when it
is missing, or no longer matches the device (a restored database, a deleted file), a new token is issued and
written, so a restart always leaves a working pair. Secrets files are written atomically with mode 0600.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Device
from profiler_service import notify
from profiler_service.security import hash_token, new_token, same

log = logging.getLogger("dnas.service")


def write_secret(path: Path, value: str, *, replace: bool = True) -> None:
    """Write a secret atomically (no reader ever sees half a token), readable only by this user.

    With `replace=False` an existing file is never overwritten, even one created a moment ago by someone
    else: the finished file is hard-linked into place, which fails with FileExistsError where a rename
    would silently replace.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_secret(path: Path) -> str | None:
    """The secret in a file, or None when there is no file or it is empty."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return None
    return value or None


def token_file(token_dir: Path, name: str) -> Path:
    return token_dir / f"{name}.token"


def provision_device(session: Session, *, name: str, platform: str, token_dir: Path) -> str:
    """Make sure device `name` exists and `token_dir/name.token` holds a token that authenticates as it.

    Returns what was done: "registered", "reissued" or "kept". A retired device is left alone ("retired").
    """
    path = token_file(token_dir, name)
    device = session.scalar(select(Device).where(Device.name == name))
    current = read_secret(path)
    if device is not None and device.retired_at is not None:
        log.warning("provisioned device %r is retired; its token file is left as it is", name)
        return "retired"
    if device is not None and current is not None and same(device.token_hash, hash_token(current)):
        return "kept"
    token = new_token("dnas_agent")
    if device is None:
        session.add(Device(name=name, platform=platform, properties={"provisioned": True},
                           token_hash=hash_token(token)))  # fmt: skip
        outcome = "registered"
    else:
        device.token_hash = hash_token(token)
        notify.device_changed(session, device.id)  # a running service's workers forget the old token
        outcome = "reissued"
    try:
        session.commit()
    except IntegrityError:  # another service process registered it first: take over the token from here
        session.rollback()
        return provision_device(session, name=name, platform=platform, token_dir=token_dir)
    write_secret(path, token)
    log.info("provisioned device %r (%s); agent token in %s", name, outcome, path)
    return outcome


def ensure_admin_token_file(path: Path) -> str:
    """The admin token kept in `path`: read when present, else generated and written there (never printed)."""
    token = read_secret(path)
    if token is None:
        token = new_token("dnas_admin")
        write_secret(path, token)
        log.info("generated the admin token into %s", path)
    return token
