"""A fleet of idle agents on one service: what holding their long polls costs, and how fast a job reaches one.

`python -m bench.fleet [--agents 1000]` starts a throwaway PostgreSQL cluster on loopback (the tests' helper,
with pg_stat_statements loaded), the real service on 2 uvicorn workers, registers one device per
`--agents-per-device` agents, and holds `--agents` long-polling agents (asyncio httpx calls in this process,
protocol 1, `wait_seconds` 20 as the shipped agents send). Then:

1. idle: once every agent's call is waiting (the service's `dnas_lease_waiting` gauge), for `--idle-seconds`
   (longer than one wait, so every agent's renewed call is inside it) nothing is queued and the bench reads
   statements executed (pg_stat_statements) and transactions (pg_stat_database) in the service's database,
   the service processes' CPU time, and their resident memory against before the agents connected;
2. lease latency: `--jobs` jobs, each queued for one device in its own transaction by the service's own
   `add_jobs` (which notifies), spaced `--spacing` seconds apart; the time from just before the commit until
   an agent's lease answer with that job arrives;
3. counts over the whole run: answers by status (5xx must be 0), transport errors, jobs leased more than once
   (must be 0: leases last 600 s here, so no lease expires during the bench).

Bounded: every phase has a deadline, and the whole run takes about a minute and a half at 1000 agents on a
quiet machine (plus the service's start). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import select

from db.engine import make_engine, make_sessionmaker
from db.models import Job, Operator
from profiler_service.local_server import Service, running_service
from profiler_service.operators import insert_ignore
from profiler_service.queue import add_jobs
from search.space.opspec import OpSpec
from tests.postgres import PostgresCluster, postgres_cluster

WAIT_S = 20.0  # what the shipped agents ask for (device_agents/client.py)
DB = "fleet"


@dataclass
class Fleet:
    """What the agents saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    leases: defaultdict[int, list[float]] = field(default_factory=lambda: defaultdict(list))  # job id -> arrivals


# ---- the service's processes, from /proc ---------------------------------------------------------------------
def _tree(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        with contextlib.suppress(OSError):  # it exited meanwhile
            stack.extend(int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split())
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the service's process tree."""
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the whole line)
    return total / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        try:
            m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text(), re.M)
        except OSError:
            continue
        total += int(m.group(1)) * 1024 if m else 0
    return total


# ---- the database's own counts --------------------------------------------------------------------------------
def load_pg_stat_statements(cluster: PostgresCluster) -> None:
    """pg_stat_statements needs to be preloaded: append it to the throwaway cluster's config and restart."""
    with open(cluster.data / "postgresql.conf", "a") as conf:
        conf.write("\nshared_preload_libraries = 'pg_stat_statements'\n")
    cluster.stop()
    cluster.start()
    with psycopg.connect(_admin_dsn(cluster), autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


def _admin_dsn(cluster: PostgresCluster) -> str:
    return f"host=127.0.0.1 port={cluster.port} user=postgres dbname=postgres"


def db_counts(cluster: PostgresCluster) -> dict[str, Any]:
    """Statements and transactions so far in the service's database, read from another database (`postgres`),
    so the reading itself is not counted; and the statements by text, to say what the idle rate is made of."""
    with psycopg.connect(_admin_dsn(cluster), autocommit=True) as c:
        xacts = c.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (DB,)
        ).fetchone()[0]  # fmt: skip
        rows = c.execute(
            "SELECT query, sum(calls) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = %s GROUP BY query", (DB,)
        ).fetchall()  # fmt: skip
    return {"xacts": int(xacts), "statements": {q: int(n) for q, n in rows}}


# ---- agents -----------------------------------------------------------------------------------------------
async def agent(client: httpx.AsyncClient, token: str, fleet: Fleet, stop: asyncio.Event) -> None:
    """One device agent's lease loop (protocol 1): holds a long poll, records what it gets, asks again. A job
    is only held, never measured: the bench is about waiting and waking."""
    headers = {"Authorization": f"Bearer {token}"}
    while not stop.is_set():
        try:
            resp = await client.post("/v1/agent/lease", json={"wait_seconds": WAIT_S}, headers=headers)
        except httpx.TransportError as exc:
            fleet.transport_errors[type(exc).__name__] += 1
            await asyncio.sleep(1)  # a real agent backs off too; counted, and the bench reports it
            continue
        arrived = time.monotonic()
        fleet.statuses[resp.status_code] += 1
        if resp.status_code == 200:
            fleet.leases[resp.json()["job_id"]].append(arrived)
        elif resp.status_code != 204:
            await asyncio.sleep(1)


async def gauge(client: httpx.AsyncClient, admin: str, name: str) -> float:
    text = (await client.get("/v1/metrics", headers={"Authorization": f"Bearer {admin}"})).text
    found = re.search(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def until(probe, what: str, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench.fleet: {what} not reached in {timeout_s:.0f}s")
        await asyncio.sleep(0.5)


async def register_devices(client: httpx.AsyncClient, admin: str, n: int) -> list[tuple[int, str]]:
    """(device id, agent token) of n new devices, eight requests at a time."""
    gate = asyncio.Semaphore(8)

    async def one(i: int) -> tuple[int, str]:
        async with gate:
            resp = await client.post("/v1/devices", json={"name": f"fleet-{i}", "platform": "android"},
                                     headers={"Authorization": f"Bearer {admin}"})  # fmt: skip
            resp.raise_for_status()
            body = resp.json()
            return body["id"], body["agent_token"]

    return list(await asyncio.gather(*(one(i) for i in range(n))))


# ---- queueing jobs as the service does ------------------------------------------------------------------
class Queuer:
    """Queues one job for one device in its own transaction through `queue.add_jobs`, which notifies."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sessions = make_sessionmaker(self.engine)
        self.spec = OpSpec.probe_at((1, 8, 8, 8))
        self.generation: Counter[int] = Counter()
        with self.sessions() as session:
            row = {"key": self.spec.key, "spec": self.spec.to_dict(), "onnx_sha256": None, "onnx_bytes": None}
            insert_ignore(session, Operator, [row])  # a lease only reads the op's row; no file is fetched here
            session.commit()

    def queue(self, device_id: int) -> tuple[int, float]:
        """The job's id, and the moment just before its transaction committed."""
        generation = self.generation[device_id]
        self.generation[device_id] += 1
        with self.sessions() as session:
            add_jobs(session, device_id=device_id, config={"bench": "fleet"}, config_hash="bench-fleet",
                     generations={self.spec.key: generation}, max_attempts=1)  # fmt: skip
            job_id = session.scalar(
                select(Job.id).where(Job.device_id == device_id, Job.config_hash == "bench-fleet",
                                     Job.generation == generation)
            )  # fmt: skip
            queued = time.monotonic()
            session.commit()
        assert job_id is not None
        return job_id, queued


# ---- the run ----------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def drive(svc: Service, cluster: PostgresCluster, url: str, args: argparse.Namespace) -> dict[str, Any]:
    n_devices = -(-args.agents // args.agents_per_device)
    # Idle pooled connections are dropped before uvicorn's 5 s keep-alive closes them (a reuse would fail).
    limits = httpx.Limits(max_connections=args.agents + 16, max_keepalive_connections=args.agents + 16,
                          keepalive_expiry=2.0)  # fmt: skip
    async with httpx.AsyncClient(base_url=svc.url, limits=limits, timeout=WAIT_S + 30) as client:
        await until(lambda: _at_least(client, svc.admin_token, "dnas_lease_listeners", args.workers),
                    "every worker listening", 60)  # fmt: skip
        devices = await register_devices(client, svc.admin_token, n_devices)
        queuer = Queuer(url)
        rss_before = rss_bytes(svc.proc.pid)

        fleet, stop = Fleet(), asyncio.Event()
        tasks = [asyncio.create_task(agent(client, devices[i // args.agents_per_device][1], fleet, stop))
                 for i in range(args.agents)]  # fmt: skip
        started = time.monotonic()
        await until(lambda: _at_least(client, svc.admin_token, "dnas_lease_waiting", args.agents),
                    f"{args.agents} lease calls waiting", 90)  # fmt: skip
        connect_s = time.monotonic() - started
        await asyncio.sleep(WAIT_S)  # every agent's first call renewed once: the steady state

        # 1. idle: nothing queued, no scrape, for longer than one wait
        db0, cpu0, t0, renewed0 = db_counts(cluster), cpu_seconds(svc.proc.pid), time.monotonic(), fleet.statuses[204]
        await asyncio.sleep(args.idle_seconds)
        db1, cpu1, t1 = db_counts(cluster), cpu_seconds(svc.proc.pid), time.monotonic()
        renewed = fleet.statuses[204] - renewed0
        rss_held = rss_bytes(svc.proc.pid)
        idle_s = t1 - t0
        calls = {q: n - db0["statements"].get(q, 0) for q, n in db1["statements"].items()}
        calls = {q: n for q, n in calls.items() if n > 0}

        # 2. lease latency
        queued: dict[int, float] = {}
        for i in range(args.jobs):
            device_id = devices[(i * 7919) % n_devices][0]  # spread over the devices
            job_id, at = await asyncio.to_thread(queuer.queue, device_id)
            queued[job_id] = at
            await asyncio.sleep(args.spacing)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(j in fleet.leases for j in queued):
            await asyncio.sleep(0.2)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        queuer.engine.dispose()

    latencies = [fleet.leases[j][0] - at for j, at in queued.items() if j in fleet.leases]
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:8]
    return {
        "agents": args.agents,
        "devices": n_devices,
        "workers": args.workers,
        "wait_seconds": WAIT_S,
        "all_waiting_after_s": round(connect_s, 1),
        "idle": {
            "seconds": round(idle_s, 1),
            "statements_per_s": round(sum(calls.values()) / idle_s, 2),
            "transactions_per_s": round((db1["xacts"] - db0["xacts"]) / idle_s, 2),
            "lease_calls_renewed_per_s": round(renewed / idle_s, 1),
            "service_cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / idle_s, 1),
            "top_statements": [{"calls": n, "query": " ".join(q.split())[:160]} for q, n in top],
        },
        "memory": {
            "service_rss_before_mib": round(rss_before / 2**20, 1),
            "service_rss_held_mib": round(rss_held / 2**20, 1),
            "per_held_connection_kib": round((rss_held - rss_before) / args.agents / 1024, 1),
        },
        "lease_latency_s": {
            "jobs": len(queued),
            "leased": len(latencies),
            "p50": _round(statistics.median(latencies) if latencies else None),
            "p90": _round(percentile(latencies, 0.90)),
            "p99": _round(percentile(latencies, 0.99)),
            "max": _round(max(latencies) if latencies else None),
        },
        "statuses": {str(k): v for k, v in sorted(fleet.statuses.items())},
        "status_5xx": sum(v for k, v in fleet.statuses.items() if k >= 500),
        "transport_errors": dict(fleet.transport_errors),
        "leased_twice": sum(1 for arrivals in fleet.leases.values() if len(arrivals) > 1),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


async def _at_least(client: httpx.AsyncClient, admin: str, name: str, n: float) -> bool:
    return await gauge(client, admin, name) >= n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--agents-per-device", type=int, default=2, help="agents racing for each device's jobs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="longer than one wait (20 s)")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--spacing", type=float, default=0.05, help="seconds between two queued jobs")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # a socket per agent here, and per call in the service
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.agents + 256)), hard))

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, postgres_cluster() as cluster:
        load_pg_stat_statements(cluster)
        url = cluster.create_database(DB)
        with running_service(url, Path(tmp), workers=args.workers, lease_seconds=600,
                             DNAS_SERVICE_LONG_POLL_SECONDS=str(WAIT_S)) as svc:  # fmt: skip
            result = asyncio.run(drive(svc, cluster, url, args))
            warnings = [line for line in svc.log_text().splitlines() if " WARNING " in line or " ERROR " in line]
            result["service_log_warnings"] = {"count": len(warnings), "first": warnings[:5]}
        with psycopg.connect(_admin_dsn(cluster)) as c:
            server = c.execute("SHOW server_version").fetchone()[0]
    conditions = {
        "postgresql": server,
        "python": platform.python_version(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "total_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps({"bench": "fleet", **result, "conditions": conditions}, indent=2))


if __name__ == "__main__":
    main()
