"""Reader tokens (mint, list, revoke) and the admin token's rotation."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from db.models import ApiToken
from profiler_service import notify
from profiler_service.api.deps import AdminDep, Credentials, Id, SessionDep, SettingsDep, token_from
from profiler_service.api.pagination import After, Limit, paginated
from profiler_service.api.strict_json import StrictJsonRoute
from profiler_service.errors import Conflict, NotFound
from profiler_service.provision import write_secret
from profiler_service.reader_tokens import ReaderTokens
from profiler_service.schemas import AdminTokenRotated, TokenCreate, TokenCreated, TokenPublic
from profiler_service.security import hash_token, new_token, rotate_admin_token
from profiler_service.timeutil import utcnow

router = APIRouter(prefix="/tokens", tags=["tokens"], route_class=StrictJsonRoute, dependencies=[AdminDep])
admin_router = APIRouter(prefix="/admin-token", tags=["tokens"], route_class=StrictJsonRoute, dependencies=[AdminDep])


@admin_router.post("/rotate", response_model=AdminTokenRotated)
def rotate_admin(session: SessionDep, settings: SettingsDep, creds: Credentials) -> AdminTokenRotated:
    """Revoke the admin token that calls and issue a new one, shown once. The old one is refused at once by every
    worker (each reads the admin hash from the database, never from a cache), its dashboard sessions end, and it
    is remembered as revoked: a service started again with it configured refuses to start. When the service
    keeps its admin token in a file (`ADMIN_TOKEN_FILE`, no `ADMIN_TOKEN`), the new one is written there too."""
    token = rotate_admin_token(session, hash_token(token_from(creds, "admin")))
    if token is None:
        raise Conflict("the admin token changed while this call ran (another rotation?): nothing was changed")
    written = None
    if settings.admin_token is None and settings.admin_token_file is not None:
        write_secret(settings.admin_token_file, token)
        written = str(settings.admin_token_file)
    return AdminTokenRotated(token=token, written_to=written)


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


REVOKE_ECHO_S = 2.0  # longest wait for this worker's listener to hear the revocation it announced


def _revoke(session: Session, token_id: int, readers: ReaderTokens) -> tuple[TokenPublic, bool]:
    """The token as revoked, and whether this call revoked it (else it was already)."""
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"token {token_id} does not exist")
    revoking = row.revoked_at is None
    if revoking:
        row.revoked_at = utcnow()
        notify.tokens_changed(session)  # every worker forgets the readers it remembered, when this commits
        session.commit()
        readers.forget_all()  # this worker at once, before its listener hears it
    return TokenPublic.model_validate(row, from_attributes=True), revoking


async def revoke_token(request: Request, token_id: int, session: Session) -> TokenPublic:
    """Revoke, then answer once this worker's listener heard the revocation: PostgreSQL sends the notification
    to every listener at the same commit, so by then the other workers have it too (profiler_service/
    reader_tokens.py). Also what the dashboard's revoke button calls."""
    readers: ReaderTokens = request.app.state.readers
    heard = readers.heard_count()
    revoked, revoking = await run_in_threadpool(_revoke, session, token_id, readers)
    if revoking:
        await readers.wait_heard(heard, timeout=REVOKE_ECHO_S)
    return revoked


@router.post("/{token_id}/revoke", response_model=TokenPublic)
async def revoke(token_id: Id, session: SessionDep, request: Request) -> TokenPublic:
    """The token stops working at once (401), on every worker. Revoking twice is a no-op."""
    return await revoke_token(request, token_id, session)
