"""The admin token's lifecycle over real HTTP (issue 20, part 2, item 11): a replaced admin token stops working
at once on every worker of a multi-worker service (each used to keep the old hash for 30 s), rotating it
through the API revokes the old one for good, and failed dashboard sign-ins are limited per address."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from db.engine import make_engine, make_sessionmaker
from tests.service_harness import Service, running_service
from tests.waiting import wait_until

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def one_client_per_worker(svc: Service, stack: ExitStack, workers: int = 2) -> list[httpx.Client]:
    """A keep-alive client pinned to each worker: the kernel hands each new connection to one worker, and a
    client keeps talking over the connection it opened (`/v1/health` names the worker that answered)."""
    found: dict[int, httpx.Client] = {}

    def another_connection() -> bool:
        client = stack.enter_context(httpx.Client(base_url=svc.url, timeout=60))
        found.setdefault(client.get("/v1/health").json()["worker_pid"], client)
        return len(found) == workers

    wait_until(another_connection, what=f"a connection to each of {workers} workers", timeout_s=120, interval_s=0.01)
    return list(found.values())


def status(client: httpx.Client, token: str, path: str = "/v1/tokens") -> int:
    """An admin-only call with this token, over the client's own (pinned) connection."""
    return client.get(path, headers={"Authorization": f"Bearer {token}"}).status_code


def replace_admin_token(db: str, token: str) -> None:
    """What another instance of the service does when it starts with a new DNAS_SERVICE_ADMIN_TOKEN on the same
    database (`prepare` -> `ensure_admin_token`): the stored hash becomes the new token's."""
    from profiler_service.security import ensure_admin_token

    engine = make_engine(db)
    try:
        with make_sessionmaker(engine)() as session:
            ensure_admin_token(session, token)
    finally:
        engine.dispose()


@pytest.fixture
def two_workers(tmp_path, pg_url) -> Iterator[tuple[Service, str]]:
    with running_service(pg_url, tmp_path, workers=2) as svc:
        yield svc, pg_url


@pytest.mark.postgres
def test_a_replaced_admin_token_stops_at_once_on_every_worker(two_workers) -> None:
    svc, db = two_workers
    old, new = svc.admin_token, "replaced-admin-" + "r" * 40
    with ExitStack() as stack:
        workers = one_client_per_worker(svc, stack)
        assert [status(w, old) for w in workers] == [200, 200]  # each worker has checked the old token once
        replace_admin_token(db, new)
        assert [status(w, old) for w in workers] == [401, 401], "the replaced admin token still worked"
        assert [status(w, new) for w in workers] == [200, 200], "the new admin token did not work yet"


@pytest.mark.postgres
def test_rotating_the_admin_token_revokes_the_old_one_everywhere_and_for_good(tmp_path, pg_url) -> None:
    token_file = tmp_path / "secrets" / "admin.token"
    with running_service(pg_url, tmp_path, workers=2, admin_token="",
                         DNAS_SERVICE_ADMIN_TOKEN_FILE=str(token_file)) as svc, ExitStack() as stack:  # fmt: skip
        old = token_file.read_text().strip()
        first, second = one_client_per_worker(svc, stack)
        browser = stack.enter_context(httpx.Client(base_url=svc.url, timeout=60))
        csrf = CSRF.search(browser.get("/ui/login").text)[1]  # type: ignore[index]
        assert browser.post("/ui/login", data={"csrf": csrf, "token": old}).status_code == 303
        assert [status(first, old), status(second, old), browser.get("/ui/tokens").status_code] == [200, 200, 200]

        rotated = first.post("/v1/admin-token/rotate", headers={"Authorization": f"Bearer {old}"})
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["token"]
        assert new != old and rotated.json()["written_to"] == str(token_file)
        assert token_file.read_text().strip() == new  # a restart keeps the new token, not the revoked one
        assert [status(first, old), status(second, old)] == [401, 401], "the revoked admin token still worked"
        assert [status(first, new), status(second, new)] == [200, 200]
        assert browser.get("/ui/tokens").status_code == 303  # the old token's dashboard session ended
        again = second.post("/v1/admin-token/rotate", headers={"Authorization": f"Bearer {old}"})
        assert again.status_code == 401  # the revoked token cannot rotate its way back in

    # Started again with the revoked token configured, the service refuses, saying why.
    from profiler_service.app import prepare
    from profiler_service.security import RevokedAdminToken
    from profiler_service.settings import ServiceSettings

    with pytest.raises(RevokedAdminToken, match="revoked"):
        prepare(ServiceSettings(database_url=pg_url, admin_token=old))
    prepare(ServiceSettings(database_url=pg_url, admin_token=new))  # the new one starts it


# ---- failed sign-ins ------------------------------------------------------------------------------------------
def sign_in(url: str, token: str, source: str = "127.0.0.1") -> httpx.Response:
    """A browser at address `source` (any of 127/8 reaches the service on loopback) posting the sign-in form."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=url, timeout=60, transport=transport) as browser:
        csrf = CSRF.search(browser.get("/ui/login").text)[1]  # type: ignore[index]
        return browser.post("/ui/login", data={"csrf": csrf, "token": token})


def test_failed_sign_ins_are_limited_per_address(tmp_path) -> None:
    with running_service(f"sqlite:///{tmp_path / 'limit.db'}", tmp_path, DNAS_SERVICE_SIGN_IN_FAILURES="3") as svc:
        guesses = [sign_in(svc.url, f"dnas_read_guess{i}").status_code for i in range(3)]
        assert guesses == [401, 401, 401]
        limited = sign_in(svc.url, svc.admin_token)  # even the right token, from this address, for now
        assert limited.status_code == 429 and "too many failed sign-ins" in limited.text
        assert 1 <= int(limited.headers["retry-after"]) <= 60 and "dnas_session" not in limited.cookies
        assert sign_in(svc.url, svc.admin_token, source="127.0.0.2").status_code == 303  # another address
        with svc.client() as api:  # the API's Bearer callers are not sign-ins
            assert api.get("/v1/tokens").status_code == 200
