"""The cost of one request: table fetches and agent protocol calls on 2 uvicorn workers (`dnas serve`) with
PostgreSQL on loopback, driven by `wrk` (C), beside nginx serving the same table bytes in the same run. Prints
JSON: requests/s, p50/p99, the CPU the service's workers and PostgreSQL spent per request (which a shared
machine's load changes far less than requests/s), the service/nginx ratio, and the machine's conditions (load
average at start and end), so a figure from a shared machine is read as one.

    python -m bench.load [--seconds 5] [--connections 16,64,200] [--compare /path/to/other/tree]
                         [--py-spy DIR]

`--compare TREE` serves a second service from another source tree (its own database in the same cluster)
and alternates the two in every step: an A/B pair under the same machine state. `--py-spy DIR` records one
worker of the (first) service during its 64-connection fetch run (py-spy, `--format raw`, for flamegraph.pl
or speedscope). Correctness under concurrency (nothing leased twice, nothing lost) is bench/load_check.py.
Needs `wrk` and `nginx` (apt-get install -y wrk nginx). Traffic goes to loopback only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
from sqlalchemy import text

from bench.wrk import nginx_serving, run_wrk
from db.engine import make_engine
from profiler_service.local_server import Service, free_port, register, running_service, start_run, wait_for_run
from profiler_service.notify import JOBS_CHANNEL

ROOT = Path(__file__).resolve().parents[1]  # the source tree this bench is part of
SPACE = {"resolution": 224, "width": 1.0}  # its table: 36 KB of JSON, 2.3 KB gzipped
STATS = {"median_us": 100.0, "mean_us": 101.0, "p10_us": 95.0, "p90_us": 110.0, "std_us": 4.0, "n": 10}


@dataclass
class Target:
    """One running service, ready for load: a published table and a reader token to fetch it, an agent token
    with queued jobs to lease."""

    name: str
    svc: Service
    db_url: str
    table_path: str
    reader_token: str
    agent_token: str
    device_id: int
    run_id: int


def publish_table(svc: Service, name: str) -> tuple[dict, int]:
    """A device whose 224 / 1.0 table is published, its results reported in batches (as agents do)."""
    with svc.client() as admin:
        device = register(admin, name)
        run = start_run(admin, device["id"], SPACE)
        agent = {"Authorization": f"Bearer {device['agent_token']}"}
        with httpx.Client(base_url=svc.url, headers=agent, timeout=60) as c:
            lease = {"wait_seconds": 0, "max_jobs": 500, "protocol": 2}
            while (resp := c.post("/v1/agent/lease", json=lease)).status_code == 200:
                batch = resp.json()
                results = [{"job_id": j["job_id"], **STATS} for j in batch["jobs"]]
                body = {"lease_token": batch["lease_token"], "results": results}
                c.post("/v1/agent/results", json=body).raise_for_status()
        published = wait_for_run(admin, run["id"])
        assert published["status"] == "published", published
    return device, run["id"]


def queue_load_jobs(db_url: str, run_id: int, jobs: int) -> int:
    """Copies of the run's jobs as new generations, each generation its own batch group: work for the agent
    load that never runs out mid-run and needs no onnx export. Inserted in SQL: the API queues runs, and a
    run's ops are unique per generation. Announced in the same transaction, as the API's queueing does
    (profiler_service/notify.py): the worker that answered publish_table's last lease 204 has the device recorded
    idle, and without the notification it answered every lease 204 until its recheck, a whole 5 s run. Then
    analysed, as autovacuum would be a minute later."""
    engine = make_engine(db_url)
    with engine.begin() as conn:
        per_gen = conn.scalar(text("SELECT count(*) FROM jobs WHERE run_id = :r"), {"r": run_id})
        generations = math.ceil(jobs / per_gen)
        conn.execute(
            text(
                "INSERT INTO jobs (device_id, op_key, config_hash, config, generation, status, attempts, "
                "max_attempts, batch_group, created_at) "
                "SELECT device_id, op_key, config_hash, config, g, 'queued', 0, max_attempts, 'load:' || g, now() "
                "FROM jobs, generate_series(1, :n) AS g WHERE run_id = :r ORDER BY g, id"
            ),
            {"n": generations, "r": run_id},
        )
        device_id = conn.scalar(text("SELECT device_id FROM profiling_runs WHERE id = :r"), {"r": run_id})
        conn.execute(text("SELECT pg_notify(:channel, :device)"), {"channel": JOBS_CHANNEL, "device": str(device_id)})
    # The statistics autovacuum takes within a minute of such an insert. Before it, the planner still believes
    # the jobs it saw last, all done: the partial indexes over pending jobs look empty, and the claim counts its
    # group through every pending job of the device (docs/benchmarks.md, "the claim's plans").
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE jobs"))
    engine.dispose()
    return generations * per_gen


def prepare(name: str, svc: Service, db_url: str) -> Target:
    device, run_id = publish_table(svc, name)
    with svc.client() as admin:
        reader = admin.post("/v1/tokens", json={"name": "load"}).raise_for_status().json()["token"]
    path = f"/v1/devices/{device['id']}/latency-tables/latest"
    return Target(name, svc, db_url, path, reader, device["agent_token"], device["id"], run_id)


def table_bytes(t: Target) -> tuple[bytes, bytes]:
    """The table as the service sends it: identity bytes, and the gzip bytes on the wire."""
    auth = {"Authorization": f"Bearer {t.reader_token}"}
    identity = httpx.get(t.svc.url + t.table_path, headers=auth | {"Accept-Encoding": "identity"}, timeout=60)
    with httpx.stream("GET", t.svc.url + t.table_path, headers=auth | {"Accept-Encoding": "gzip"}, timeout=60) as z:
        wire = b"".join(z.iter_raw())
        assert z.headers.get("content-encoding") == "gzip", z.headers
    return identity.content, wire


def worker_pids(svc: Service) -> list[int]:
    """uvicorn's worker processes: the children of `dnas serve` but multiprocessing's resource tracker."""
    out = subprocess.run(["pgrep", "-P", str(svc.proc.pid)], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    return [p for p in pids if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()]


T0 = time.monotonic()


def log(what: str) -> None:
    """Progress on stderr (stdout is the JSON): where a slow run spends its setup."""
    print(f"[bench.load {time.monotonic() - T0:6.1f}s] {what}", file=sys.stderr, flush=True)


def conditions() -> dict:
    return {
        "loadavg": list(os.getloadavg()),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def start_profile(svc: Service, seconds: float, out_dir: Path, label: str) -> subprocess.Popen:
    out_dir.mkdir(parents=True, exist_ok=True)
    pid = worker_pids(svc)[0]
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(spy), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200", "--nonblocking",
                             "--format", "raw", "-o", str(out_dir / f"{label}.txt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[int] | None:
    """utime, stime, cutime, cstime of a process in clock ticks (fields 14-17 of /proc/PID/stat), None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between the open and the read
        return None
    return [int(f) for f in fields[11:15]]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU these processes have used so far, 0 for one that is gone."""
    return sum(sum(st[:2]) for pid in pids if (st := _stat(pid)) is not None) / CLOCK_TICKS


def postgres_cpu_seconds(data_dir: Path) -> float:
    """CPU the whole cluster has used so far: the postmaster, its live children (read now: a backend opened by a
    pool meanwhile counts too), and the children it has reaped (cutime, cstime: a backend that exited)."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
    own = _stat(postmaster) or [0, 0, 0, 0]
    return (sum(own) / CLOCK_TICKS) + cpu_seconds([int(c) for c in children])


def with_cpu(run: Callable[[], dict], service: list[int], pg_data: Path) -> dict:
    """`run`'s wrk result with the CPU the service's workers and PostgreSQL spent per request in it: a cost that
    a shared machine's load does not change the way it changes requests/s (time waiting for a CPU is not CPU)."""
    before = cpu_seconds(service), postgres_cpu_seconds(pg_data)
    result = run()
    after = cpu_seconds(service), postgres_cpu_seconds(pg_data)
    n = max(result["requests"], 1)
    result["service_cpu_ms_per_request"] = round((after[0] - before[0]) * 1e3 / n, 3)
    result["postgres_cpu_ms_per_request"] = round((after[1] - before[1]) * 1e3 / n, 3)
    return result


def ratio(a: float, b: float, digits: int = 3) -> float | None:
    """a / b, or None when nothing was measured for b (a run where no request finished)."""
    return round(a / b, digits) if b else None


def run_bench(
    args: argparse.Namespace,
    cluster_url: callable,
    work: Path,  # type: ignore[valid-type]
    pg_data: Path,
) -> dict:
    trees = [("this", None)] + ([("compare", args.compare)] if args.compare else [])
    start = conditions()
    with ExitStack() as stack:
        targets = []
        for name, tree in trees:
            db_url = cluster_url(f"load_{name}")
            # Each service imports its own tree: PYTHONPATH names it, and PYTHONSAFEPATH keeps `python -m dnas` from
            # putting the working directory first (it did: both sides of every A/B pair ran the tree the bench was
            # started in). Extra entries of the caller's PYTHONPATH stay behind it.
            source = str(Path(tree).resolve() if tree else ROOT)
            path = os.pathsep.join([source, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])
            env = {"DNAS_SERVICE_LONG_POLL_SECONDS": "0", "PYTHONSAFEPATH": "1", "PYTHONPATH": path}
            service = running_service(db_url, work / name, workers=args.workers, lease_seconds=300, **env)
            svc = stack.enter_context(service)
            log(f"{name}: service up")
            targets.append(prepare(name, svc, db_url))
            log(f"{name}: table published")
        body, gzipped = table_bytes(targets[0])
        nginx = nginx_serving(body, gzipped, port=free_port(), workers=args.workers, workdir=work)
        nginx_url = stack.enter_context(nginx)
        gzip_header = {"Accept-Encoding": "gzip"}

        fetches: dict[str, list[dict]] = {t.name: [] for t in targets} | {"nginx": []}
        profile = None
        for step, connections in enumerate(args.connections):
            for t in targets if step % 2 == 0 else targets[::-1]:  # alternate who goes first: no order bias
                if args.py_spy and connections == 64 and t is targets[0]:
                    profile = start_profile(t.svc, args.seconds, Path(args.py_spy), "fetch")
                log(f"{t.name}: fetches at {connections} connections")
                fetch = partial(
                    run_wrk,
                    t.svc.url + t.table_path,
                    connections=connections,
                    seconds=args.seconds,
                    headers=gzip_header | {"Authorization": f"Bearer {t.reader_token}"},
                    workdir=work,
                )
                fetches[t.name].append(with_cpu(fetch, worker_pids(t.svc), pg_data))
                log(json.dumps(fetches[t.name][-1]))
            fetches["nginx"].append(run_wrk(nginx_url, connections=connections, seconds=args.seconds,
                                            headers=gzip_header, workdir=work))  # fmt: skip
        if profile:
            profile.wait()

        agents: dict[str, dict] = {}
        jobs = int(args.seconds * 2000 / 2 * args.max_jobs)  # enough for 2,000 calls/s
        for t in targets:
            queued = queue_load_jobs(t.db_url, t.run_id, jobs)
            log(f"{t.name}: {queued} jobs queued; agent calls")
            if args.py_spy and t is targets[0]:
                profile = start_profile(t.svc, args.seconds, Path(args.py_spy), "agent")
            calls = partial(run_wrk, t.svc.url + "/v1/agent/lease", connections=args.agent_connections,
                            seconds=args.seconds, script="agent", workdir=work,
                            env={"AGENT_TOKEN": t.agent_token, "MAX_JOBS": str(args.max_jobs)})  # fmt: skip
            agents[t.name] = with_cpu(calls, worker_pids(t.svc), pg_data)
            agents[t.name]["jobs_queued"] = queued
            log(json.dumps(agents[t.name]))
            if profile and t is targets[0]:
                profile.wait()

    def ratios(name: str) -> list[dict]:
        return [{"connections": s["connections"], "fetches_per_s": ratio(s["per_s"], n["per_s"], 4)}
                for s, n in zip(fetches[name], fetches["nginx"], strict=True)]  # fmt: skip

    return {
        "conditions": {
            "start": start,
            "end": conditions(),
            "workers": args.workers,
            "seconds_per_run": args.seconds,
            "trees": {name: tree or "this" for name, tree in trees},
        },
        "table": {"bytes": len(body), "gzip_bytes": len(gzipped)},
        "fetches": fetches,
        "service_over_nginx": {t.name: ratios(t.name) for t in targets},
        **(
            {
                "compare_over_this": [
                    {
                        "connections": a["connections"],
                        "fetches_per_s": ratio(b["per_s"], a["per_s"]),
                        "p99": ratio(b["p99_ms"], a["p99_ms"]),
                    }
                    for a, b in zip(fetches["this"], fetches["compare"], strict=True)
                ]
            }
            if args.compare
            else {}
        ),
        "agent_protocol": {"connections": args.agent_connections, "max_jobs": args.max_jobs, **agents},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5, help="length of each wrk run")
    parser.add_argument("--connections", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64, 200])
    parser.add_argument("--agent-connections", type=int, default=64)
    parser.add_argument("--max-jobs", type=int, default=10, help="jobs per leased batch")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--compare", help="another source tree (e.g. a worktree of main) to serve beside this one")
    parser.add_argument("--py-spy", help="directory for py-spy profiles of one worker under load")
    args = parser.parse_args()
    from tests.postgres import postgres_cluster

    with tempfile.TemporaryDirectory() as tmp, postgres_cluster() as cluster:
        result = run_bench(args, cluster.create_database, Path(tmp), cluster.data)
    print(json.dumps({"bench": "load", **result}, indent=2))


if __name__ == "__main__":
    main()
