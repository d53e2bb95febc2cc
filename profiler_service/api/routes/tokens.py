from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy import select

from db.models import ApiToken
from profiler_service.api.deps import AdminDep, Id, SessionDep
from profiler_service.api.pagination import After, Limit, paginated
from profiler_service.api.strict_json import StrictJsonRoute
from profiler_service.errors import NotFound
from profiler_service.schemas import TokenCreate, TokenCreated, TokenPublic
from profiler_service.security import hash_token, new_token
from profiler_service.timeutil import utcnow

router = APIRouter(prefix="/tokens", tags=["tokens"], route_class=StrictJsonRoute, dependencies=[AdminDep])


@router.post("", status_code=201, response_model=TokenCreated)
def mint_reader_token(body: TokenCreate, session: SessionDep) -> TokenCreated:
    """A read-only token for search clients: lists devices, runs and tables, changes nothing."""
    token = new_token("dnas_read")
    row = ApiToken(name=body.name, role="reader", token_hash=hash_token(token))
    session.add(row)
    session.commit()
    return TokenCreated(id=row.id, name=row.name, role=row.role, token=token)


@router.get("", response_model=list[TokenPublic])
def list_tokens(session: SessionDep, request: Request, response: Response, include_revoked: bool = False,
                after: After = 0, limit: Limit = 100) -> list[TokenPublic]:  # fmt: skip
    """Reader tokens (never their value: only its hash is kept), by id, `limit` at a time after `after`."""
    query = select(ApiToken).where(ApiToken.id > after).order_by(ApiToken.id).limit(limit)
    if not include_revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    rows = [TokenPublic.model_validate(t, from_attributes=True) for t in session.scalars(query)]
    return paginated(rows, request, response, limit, cursor=lambda t: t.id)


@router.post("/{token_id}/revoke", response_model=TokenPublic)
def revoke(token_id: Id, session: SessionDep) -> TokenPublic:
    """The token stops working at once (401). Revoking twice is a no-op."""
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"token {token_id} does not exist")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return TokenPublic.model_validate(row, from_attributes=True)
