"""Profile a whole space through the real service with the local agent; compare wall time with the time the
agent spent inside its runner (the ideal). Prints JSON.

    python -m bench.profile_service [--resolution 224] [--width 1.0] [--rounds 20] [--runs-per-round 3]
        [--protocol 2] [--cpus 0]

Protocol 2 leases the whole run as one batch (one lease, one heartbeat stream, one results POST) and measures
it in interleaved rounds; `--protocol 1` is the old one-job-at-a-time path, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from device_agents.client import AgentClient
from device_agents.local.backend import LocalBackend
from device_agents.loop import Agent
from profiler_service.local_server import register, running_service, start_run, wait_for_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs-per-round", type=int, default=3)
    parser.add_argument("--protocol", type=int, default=2, choices=(1, 2))
    parser.add_argument("--cpus", default=None, help="pin the measuring child, e.g. '0'")
    parser.add_argument("--db", default=None, help="database URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        url = args.db or f"sqlite:///{work / 'bench.db'}"
        config = {"threads": 1, "warmup": args.warmup, "rounds": args.rounds, "runs_per_round": args.runs_per_round}
        cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else None
        with running_service(url, work, lease_seconds=60) as svc, svc.client() as admin:
            device = register(admin, f"bench-{os.getpid()}")
            t_create = time.perf_counter()
            run = start_run(
                admin,
                device["id"],
                space={"resolution": args.resolution, "width": args.width},
                config=config,
            )
            create_s = time.perf_counter() - t_create
            agent = Agent(
                AgentClient(svc.url, device["agent_token"]),
                LocalBackend(cpus=cpus),
                cache_dir=work / "models",
                wait_seconds=0,  # the queue is full from the start: stop at the first empty answer
                exit_when_idle=True,
                protocol=args.protocol,
            )
            t0 = time.perf_counter()
            stats = agent.run()
            run = wait_for_run(admin, run["id"])
            wall = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "bench": "profile_service",
                "space": {"resolution": args.resolution, "width": args.width},
                "config": config,
                "protocol": args.protocol,
                "jobs": run["total"],
                "batches": stats.batches,
                "status": run["status"],
                "create_run_s": round(create_s, 2),
                "agent_wall_s": round(wall, 2),
                "agent_measure_s": round(stats.measure_s, 2),
                "overhead_ratio": round(wall / stats.measure_s, 2),
                "jobs_per_s": round(run["total"] / wall, 1),
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
