"""An idle fleet costs the database nothing per renewed long poll, whatever its size (issue 20, part 3).

Over real HTTP, through uvicorn with two workers, on a real PostgreSQL whose pg_stat_statements counts every
statement the service sends (BEGIN, COMMIT and ROLLBACK included), read from another database. Agents, two per
device as in bench.fleet, renew 1-second long polls (`LONG_POLL_SECONDS`) in threads of this process. First
each keeps one connection, as the shipped agents do, so a worker meets only the tokens of the agents connected
to it; then, while the statements are counted, each call is made on a new connection and goes to whichever
worker accepts it, as after a proxy's restart or through a proxy's pool. A worker that had to meet a token
before its calls cost nothing paid for each such first meeting (8 statements), and bench.fleet's idle window at
1,000 agents was made of them. The workers' timers (sweep, recheck) are set to an hour, so what is counted is
what the calls cost. No sleep synchronises anything: the test waits on the agents' answer counts and on the
workers' `dnas_lease_known_agents` gauge.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests import postgres
from tests.conftest import require_postgres
from tests.service_harness import Service, register, running_service
from tests.waiting import wait_until

DB = "idle_fleet"
WORKERS = 2
TIMERS_OFF = {
    "DNAS_SERVICE_LONG_POLL_SECONDS": "1",  # an agent's call is answered 204 and renewed every second
    "DNAS_SERVICE_WAKE_RECHECK_SECONDS": "3600",
    "DNAS_SERVICE_SWEEP_SECONDS": "3600",  # each worker sweeps once, at its start, before anything is counted
}
COUNTED_ANSWERS = 3  # renewal cycles counted
PER_ROW_LAST_SEEN = re.compile(r"UPDATE devices SET last_seen_at=.* WHERE devices\.id = \$")


@pytest.fixture
def counted_pg() -> Iterator[tuple[postgres.PostgresCluster, str]]:
    """A PostgreSQL server of this test's own with pg_stat_statements loaded, and the service's database."""
    require_postgres()
    with postgres.postgres_cluster() as cluster:
        cluster.load_pg_stat_statements()
        yield cluster, cluster.create_database(DB)


class Agents:
    """Long-polling agents in threads: each holds one lease call at a time and calls again when answered."""

    def __init__(self, url: str, tokens: list[str]) -> None:
        self.url, self.tokens = url, tokens
        self.answers: Counter[int] = Counter()  # agent index -> answers so far
        self.statuses: Counter[int] = Counter()
        self.stop = threading.Event()
        self.reconnect = threading.Event()  # set: every call on a new connection
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(len(tokens))]

    def _run(self, i: int) -> None:
        headers = {"Authorization": f"Bearer {self.tokens[i]}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=60) as client:
            while not self.stop.is_set():
                close = {"Connection": "close"} if self.reconnect.is_set() else {}  # the next call: any worker
                status = client.post("/v1/agent/lease", json={"wait_seconds": 20}, headers=close).status_code
                with self._lock:
                    self.answers[i] += 1
                    self.statuses[status] += 1

    def least_answered(self) -> int:
        with self._lock:
            return min(self.answers[i] for i in range(len(self.tokens)))


@contextmanager
def fleet(url: str, tokens: list[str]) -> Iterator[Agents]:
    agents = Agents(url, tokens)
    for thread in agents.threads:
        thread.start()
    try:
        yield agents
    finally:
        agents.stop.set()
        for thread in agents.threads:
            thread.join(timeout=60)


def gauge(admin: httpx.Client, name: str) -> float:
    found = re.search(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", admin.get("/v1/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def register_known(svc: Service, admin: httpx.Client, names: list[str]) -> list[dict]:
    """Register devices, and wait until every worker knows every active device's token (the registration's
    notification makes each worker read the devices again)."""
    devices = [register(admin, name) for name in names]
    active = len(admin.get("/v1/devices", params={"limit": 1000}).json())
    wait_until(lambda: gauge(admin, "dnas_lease_known_agents") >= WORKERS * active,
               what=f"{WORKERS} workers knowing {active} tokens", timeout_s=60, alive=[svc.proc])  # fmt: skip
    return devices


def wait_answered(svc: Service, agents: Agents, n: int) -> None:
    wait_until(lambda: agents.least_answered() >= n, what=f"{len(agents.tokens)} agents answered {n} times",
               timeout_s=120, alive=[svc.proc])  # fmt: skip


def renewal_cost(svc: Service, cluster: postgres.PostgresCluster, admin: httpx.Client, n_agents: int) -> Counter:
    """Statements the service sent while each of `n_agents` idle agents was answered COUNTED_ANSWERS times."""
    devices = register_known(svc, admin, [f"fleet{n_agents}-{i}" for i in range(n_agents // 2)])
    with fleet(svc.url, [d["agent_token"] for d in devices for _ in range(2)]) as agents:
        wait_answered(svc, agents, 1)  # every device's protocol is recorded: once, on the first call
        # A device added now makes both workers read the devices again: each knows every protocol as recorded.
        register_known(svc, admin, [f"fleet{n_agents}-marker"])
        before = Counter(cluster.statements(DB))
        agents.reconnect.set()
        wait_answered(svc, agents, agents.least_answered() + COUNTED_ANSWERS)
        after = Counter(cluster.statements(DB))
        assert set(agents.statuses) == {204}, agents.statuses  # idle: nothing to lease, nothing refused
    return after - before


def _shown(counts: Counter) -> str:
    return "\n".join(f"{n:5d} {' '.join(q.split())[:140]}" for q, n in counts.most_common(8)) or "(none)"


def test_idle_renewals_cost_no_statement_whatever_the_fleet(counted_pg, tmp_path):
    cluster, url = counted_pg
    with running_service(url, tmp_path, workers=WORKERS, **TIMERS_OFF) as svc, svc.client() as admin:
        few = renewal_cost(svc, cluster, admin, 6)
        many = renewal_cost(svc, cluster, admin, 40)
    # 120 renewals against 18: a statement per renewal, or per first meeting of a token by a worker, shows here.
    assert many.total() <= few.total() + 4, (
        f"6 agents: {few.total()} statements\n{_shown(few)}\n40 agents: {many.total()}\n{_shown(many)}"
    )
    assert many.total() <= 4, _shown(many)


def test_last_seen_is_written_in_batches_not_per_call(counted_pg, tmp_path):
    """Known agents' calls write no `last_seen_at` themselves: each worker's recheck writes every device whose
    value is missing or older than 30 s in one statement, so the dashboard still sees the fleet connected."""
    cluster, url = counted_pg
    quick_recheck = TIMERS_OFF | {"DNAS_SERVICE_WAKE_RECHECK_SECONDS": "0.5"}
    with running_service(url, tmp_path, workers=WORKERS, **quick_recheck) as svc, svc.client() as admin:
        devices = register_known(svc, admin, [f"seen-{i}" for i in range(10)])
        with fleet(svc.url, [d["agent_token"] for d in devices for _ in range(2)]) as agents:
            wait_answered(svc, agents, 1)
            wait_until(lambda: all(d["last_seen_at"] for d in admin.get("/v1/devices").json()),
                       what="every device seen", timeout_s=60, alive=[svc.proc])  # fmt: skip
    counts = Counter(cluster.statements(DB))
    per_row = sum(n for q, n in counts.items() if PER_ROW_LAST_SEEN.search(" ".join(q.split())))
    batched = sum(n for q, n in counts.items() if q.startswith("UPDATE devices SET last_seen_at") and " IN (" in q)
    assert per_row == 0, _shown(counts)
    assert batched >= 1, _shown(counts)
