from __future__ import annotations

from fastapi import APIRouter

from db.models import ApiToken
from profiler_service.api.deps import AdminDep, SessionDep
from profiler_service.schemas import TokenCreate, TokenCreated
from profiler_service.security import hash_token, new_token

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.post("", status_code=201, response_model=TokenCreated, dependencies=[AdminDep])
def mint_reader_token(body: TokenCreate, session: SessionDep) -> TokenCreated:
    """A read-only token for search clients: lists devices, runs and tables, changes nothing."""
    token = new_token("dnas_read")
    row = ApiToken(name=body.name, role="reader", token_hash=hash_token(token))
    session.add(row)
    session.commit()
    return TokenCreated(id=row.id, name=row.name, role=row.role, token=token)
