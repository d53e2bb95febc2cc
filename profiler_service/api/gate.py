"""Refuse a stranger before reading the body: a missing or unknown token costs the service no bytes read and no
parsing (a 6.7 MB body from nobody used to be read and parsed on the event loop before its 401).

The route class (api/strict_json.py) runs this first for every route whose dependencies name a kind of caller.
For the admin and reader it is the whole check, remembered for the request so the dependency does not repeat
it; for an agent it asks only whether the token belongs to a device, and the dependency (`require_agent`)
still loads the device and decides. Devices whose token passed are remembered per app (on `app.state`, so two
apps in one process never share them) for a while, so a polling agent costs no extra query; only what is let
through is remembered, never a refusal.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from profiler_service.api import deps
from profiler_service.security import hash_token

ROLES = {deps.require_admin: "admin", deps.require_reader: "reader", deps.require_agent: "agent",
         deps.require_polling_agent: "agent"}  # fmt: skip
KNOWN_FOR_S = 30.0
MAX_KNOWN = 10_000


def needed_role(dependant: Any) -> str | None:
    """The kind of caller a route's dependencies require (None: anyone), found by walking them once."""
    stack = [dependant]
    while stack:
        dep = stack.pop()
        if dep.call in ROLES:
            return ROLES[dep.call]
        stack.extend(dep.dependencies)
    return None


def _known_agents(request: Request) -> dict[str, float]:
    """Token digest -> when a device was last found for it, for this app."""
    state = request.app.state
    if not hasattr(state, "known_agents"):
        state.known_agents = {}
    return state.known_agents


def _agent_known(known: dict[str, float], digest: str) -> bool:
    seen = known.get(digest)
    return seen is not None and time.monotonic() - seen < KNOWN_FOR_S


async def refuse_strangers(request: Request, role: str) -> None:
    """Raise 401 (no token, or one the service does not know) or 403 (admin and reader: the wrong kind)."""
    label = {"admin": "admin", "reader": "reader or admin", "agent": "device agent"}[role]
    digest = hash_token(deps.token_from(await deps.bearer(request), label))
    if role in ("admin", "reader"):
        await deps.authorise(request, digest, role)  # type: ignore[arg-type]
        return
    known = _known_agents(request)
    if _agent_known(known, digest) or request.app.state.wakeups.agent(digest) is not None:
        return
    await run_in_threadpool(deps.check_agent, request.app.state.read_sessions, digest)
    if len(known) >= MAX_KNOWN:
        known.clear()
    known[digest] = time.monotonic()
