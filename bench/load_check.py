"""Correctness under load on one service with several workers on PostgreSQL: N agents leasing and reporting at
once (no job leased twice, no result lost or doubled), then M concurrent clients fetching a table. Prints JSON.
Its clients are Python threads, so its timings measure them as much as the service: the cost of a request is
bench/load.py (wrk). Traffic goes to loopback only, bounded in count.

    python -m bench.load_check [--agents 50] [--fetchers 200] [--fetches 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import func, select

from db.engine import make_engine, make_sessionmaker
from db.models import Job, Measurement
from profiler_service.local_server import register, running_service, start_run, wait_for_run

RESULT = {"median_us": 100.0, "mean_us": 101.0, "p10_us": 95.0, "p90_us": 110.0, "std_us": 4.0, "n": 10}


def run_load(db_url: str, work: Path, agents: int, fetchers: int, fetches: int, workers: int) -> dict:
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    leased: list[int] = []

    def note(resp: httpx.Response) -> httpx.Response:
        with lock:
            statuses[resp.status_code] += 1
        return resp

    with running_service(db_url, work, workers=workers, lease_seconds=120,
                         DNAS_SERVICE_LONG_POLL_SECONDS="0") as svc, svc.client() as admin:  # fmt: skip
        device = register(admin, "load")
        run = start_run(admin, device["id"], {"resolution": 224, "width": 1.0})  # 112 jobs
        headers = {"Authorization": f"Bearer {device['agent_token']}"}

        def agent(_: int) -> int:
            done = 0
            with httpx.Client(base_url=svc.url, headers=headers, timeout=60) as c:
                while True:
                    resp = note(c.post("/v1/agent/lease", json={"wait_seconds": 0}))
                    if resp.status_code != 200:
                        return done
                    job = resp.json()
                    with lock:
                        leased.append(job["job_id"])
                    body = {"lease_token": job["lease_token"], **RESULT}
                    note(c.post(f"/v1/agent/jobs/{job['job_id']}/result", json=body))
                    note(c.post(f"/v1/agent/jobs/{job['job_id']}/result", json=body))  # a replay, on purpose
                    done += 1

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=agents) as pool:
            reported = sum(pool.map(agent, range(agents)))
        agents_s = time.perf_counter() - t0
        run = wait_for_run(admin, run["id"])

        latencies: list[float] = []

        def fetch(_: int) -> None:
            with httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {svc.admin_token}"},
                              timeout=60) as c:  # fmt: skip
                for _ in range(fetches):
                    start = time.perf_counter()
                    try:
                        note(c.get(f"/v1/devices/{device['id']}/latency-tables/latest"))
                    except httpx.TransportError:
                        with lock:
                            statuses[-1] += 1  # a transport error counts as a failed request, not a crash
                    with lock:
                        latencies.append(time.perf_counter() - start)

        # What one fetch carries: the version's bytes, and what goes over the wire when gzip is accepted
        # (httpx asks for it by default, as the search client and the CLI do).
        auth = {"Authorization": f"Bearer {svc.admin_token}"}
        url = f"{svc.url}/v1/devices/{device['id']}/latency-tables/latest"
        identity = httpx.get(url, headers=auth | {"Accept-Encoding": "identity"}, timeout=60)
        with httpx.stream("GET", url, headers=auth | {"Accept-Encoding": "gzip"}, timeout=60) as zipped:
            wire = b"".join(zipped.iter_raw())
            encoding = zipped.headers.get("content-encoding", "identity")
        payload = {"bytes": len(identity.content), "wire_bytes_gzip": len(wire), "content_encoding": encoding,
                   "entries": len(identity.json()["entries"]), "etag": identity.headers["etag"]}  # fmt: skip

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=fetchers) as pool:
            list(pool.map(fetch, range(fetchers)))
        fetch_s = time.perf_counter() - t0
        server_side = _server_side(admin.get("/v1/metrics").text)

    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        measurements = s.scalar(select(func.count(Measurement.id)))
        distinct_jobs = s.scalar(select(func.count(func.distinct(Measurement.job_id))))
        jobs = s.scalar(select(func.count(Job.id)))
    engine.dispose()
    latencies.sort()
    return {
        "agents": agents,
        "workers": workers,
        "jobs": jobs,
        "run_status": run["status"],
        "requests": sum(statuses.values()),
        "status_counts": dict(statuses),
        "server_errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "transport_errors": statuses.get(-1, 0),
        "leased_twice": len(leased) - len(set(leased)),
        "results_reported": reported,
        "results_stored": measurements,
        "results_doubled": measurements - distinct_jobs,
        "results_lost": jobs - measurements,
        "agents_wall_s": round(agents_s, 2),
        "table_fetch": {
            "clients": fetchers,
            "fetches": len(latencies),
            "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 1),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1e3, 1),
            "mean_ms": round(statistics.mean(latencies) * 1e3, 1),
            "wall_s": round(fetch_s, 2),
            "payload": payload,
            "server_side": server_side,
        },
    }


TABLE_ROUTE = 'route="/v1/devices/{device_id}/latency-tables/{version}"'


def _server_side(metrics: str) -> dict:
    """The service's own latency histogram for table fetches (all workers): time inside the service, without
    the queueing of 200 client threads in this one Python process on the same cores."""
    buckets = {}
    for line in metrics.splitlines():
        if line.startswith("dnas_http_request_duration_seconds_bucket") and TABLE_ROUTE in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
    total = buckets.get("+Inf", 0.0)
    if not total:
        return {}
    return {"requests": int(total), **{f"within_{le}_s_pct": round(100 * n / total, 1)
                                      for le, n in buckets.items() if le in ("0.05", "0.1", "0.2", "0.5")}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--fetchers", type=int, default=200)
    parser.add_argument("--fetches", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--db", help="PostgreSQL URL; default: a throwaway cluster started here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.db:
            result = run_load(args.db, Path(tmp), args.agents, args.fetchers, args.fetches, args.workers)
        else:
            from tests.postgres import postgres_cluster

            with postgres_cluster() as cluster:
                url = cluster.create_database("load")
                result = run_load(url, Path(tmp), args.agents, args.fetchers, args.fetches, args.workers)
    print(json.dumps({"bench": "load", **result}, indent=2))


if __name__ == "__main__":
    main()
