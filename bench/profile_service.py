"""Profile a whole space through the real service with the local agent; compare wall time with the time the
agent spent running operators (the ideal). Prints JSON.

    python -m bench.profile_service [--resolution 224] [--width 1.0] [--runs 50] [--warmup 10]
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
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--db", default=None, help="database URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        url = args.db or f"sqlite:///{work / 'bench.db'}"
        with running_service(url, work, lease_seconds=60) as svc, svc.client() as admin:
            device = register(admin, f"bench-{os.getpid()}")
            t_create = time.perf_counter()
            run = start_run(
                admin,
                device["id"],
                space={"resolution": args.resolution, "width": args.width},
                config={"threads": 1, "warmup": args.warmup, "runs": args.runs},
            )
            create_s = time.perf_counter() - t_create
            agent = Agent(
                AgentClient(svc.url, device["agent_token"]),
                LocalBackend(),
                cache_dir=work / "models",
                wait_seconds=0,  # the queue is full from the start: stop at the first empty answer
                exit_when_idle=True,
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
                "config": {"warmup": args.warmup, "runs": args.runs, "threads": 1},
                "ops": run["total"],
                "status": run["status"],
                "create_run_s": round(create_s, 2),
                "agent_wall_s": round(wall, 2),
                "agent_measure_s": round(stats.measure_s, 2),
                "overhead_ratio": round(wall / stats.measure_s, 2),
                "ops_per_s": round(run["total"] / wall, 1),
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
