"""Table fidelity on this host: profile a space, measure N sampled networks end to end through the service
and the local agent, compare with the table's plain sum, fit a calibration (leave-one-out). Prints JSON.

    python -m bench.fidelity [--resolution 224] [--width 1.0] [--samples 20] [--runs 60] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
from pathlib import Path

from device_agents.client import AgentClient
from device_agents.local.backend import LocalBackend
from device_agents.loop import Agent
from dnas.api_client import ServiceClient
from dnas.fidelity import validate
from dnas.service_cli import wait_for_run
from profiler_service.local_server import running_service
from search.space import get_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    space = get_space(resolution=args.resolution, width=args.width)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with running_service(f"sqlite:///{work / 'f.db'}", work) as svc:
            admin = ServiceClient(svc.url, svc.admin_token)
            device = admin.json("POST", "/v1/devices", json={"name": "this-host", "platform": "linux"})
            agent = Agent(AgentClient(svc.url, device["agent_token"]), LocalBackend(), cache_dir=work / "m",
                          wait_seconds=1)  # fmt: skip
            thread = threading.Thread(target=agent.run, daemon=True)
            thread.start()
            try:
                run = admin.json("POST", "/v1/profiling-runs", json={
                    "device_id": device["id"], "space": {"resolution": args.resolution, "width": args.width},
                    "config": {"threads": 1, "warmup": args.warmup, "runs": args.runs}})  # fmt: skip
                assert wait_for_run(admin, run["id"])["status"] == "published"
                report = validate(admin, device["id"], space, args.samples, work / "out", calibrate=True,
                                  seed=args.seed)  # fmt: skip
            finally:
                agent.stopping.set()
                thread.join(timeout=120)
    print(json.dumps({
        "bench": "fidelity",
        "space": {"resolution": args.resolution, "width": args.width, "hash": space.hash[:12]},
        "networks": args.samples,
        "config": {"threads": 1, "warmup": args.warmup, "runs": args.runs},
        "raw": report["raw"],
        "calibrated_leave_one_out": report.get("calibrated_leave_one_out"),
        "calibration": report.get("calibration"),
        "measured_ms_range": [min(r["measured_us"] for r in report["rows"]) / 1e3,
                              max(r["measured_us"] for r in report["rows"]) / 1e3],
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
