"""Reader tokens (admin only, as in the API): list, mint (shown once), revoke."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from profiler_service.api.deps import Id, SessionDep
from profiler_service.api.routes import tokens as tokens_api
from profiler_service.public_url import server_url
from profiler_service.schemas import TokenCreate
from profiler_service.ui.auth import AdminCallerDep, first, read_form
from profiler_service.ui.render import UiRoute, page

router = APIRouter(route_class=UiRoute)


def _tokens(request: Request, session) -> list:  # type: ignore[no-untyped-def]
    return tokens_api.list_tokens(session, request, Response(), include_revoked=True, after=0, limit=1000)


@router.get("/tokens", include_in_schema=False)
def tokens_page(request: Request, caller: AdminCallerDep, session: SessionDep) -> Response:
    return page(request, "tokens.html", tokens=_tokens(request, session), error=None, name="")


@router.post("/tokens", include_in_schema=False)
async def mint(request: Request, caller: AdminCallerDep, session: SessionDep) -> Response:
    fields = await read_form(request, caller.csrf)
    name = first(fields, "name")
    try:
        created = await run_in_threadpool(tokens_api.mint_reader_token, TokenCreate(name=name), session)
    except ValidationError as exc:
        error = "; ".join(e["msg"] for e in exc.errors())
        tokens = await run_in_threadpool(_tokens, request, session)
        return page(request, "tokens.html", 422, tokens=tokens, error=f"name: {error}", name=name)
    return page(request, "token_created.html", 201, token=created, server=server_url(request))


@router.post("/tokens/{token_id}/revoke", include_in_schema=False)
async def revoke(request: Request, token_id: Id, caller: AdminCallerDep, session: SessionDep) -> Response:
    await read_form(request, caller.csrf)
    await tokens_api.revoke_token(request, token_id, session)
    return RedirectResponse("/ui/tokens", status_code=303)
