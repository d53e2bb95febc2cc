"""Tables whose numbers are chosen, not measured: a run's jobs leased and answered through the agent API by the
test itself (no agent process). A comparison's direction (b over a, int8 over fp32) can only be checked
against numbers known in advance; two measured tables would hide an inverted ratio in their noise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.service_harness import Service


def measure_by_hand(
    svc: Service,
    device: dict[str, Any],
    space: dict[str, Any],
    median_of: Callable[[str], float],
    precision: str = "fp32",
) -> dict[str, float]:
    """Profile `space` on `device` at `precision`, each op answered with `median_of(op_key)` (its spread 0);
    the run publishes the device's next table version. Returns the medians given, by op key."""
    with svc.client() as admin:
        admin.timeout = 600  # creating a run exports (at int8 also quantizes) its ops: minutes on a loaded host
        body = {"device_id": device["id"], "space": space, "anchors": 0,
                "config": {"warmup": 1, "rounds": 2, "runs_per_round": 1, "precision": precision}}  # fmt: skip
        run = admin.post("/v1/profiling-runs", json=body).raise_for_status().json()
    chosen: dict[str, float] = {}
    with svc.client(device["agent_token"]) as agent:
        for _ in range(run["total"]):
            job = agent.post("/v1/agent/lease", json={"wait_seconds": 0}).raise_for_status().json()
            median = median_of(job["op_key"])
            chosen[job["op_key"]] = median
            stats = {"median_us": median, "mean_us": median, "p10_us": median, "p90_us": median, "std_us": 0.0,
                     "n": 2}  # fmt: skip
            agent.post(f"/v1/agent/jobs/{job['job_id']}/result",
                       json={"lease_token": job["lease_token"], **stats}).raise_for_status()  # fmt: skip
    with svc.client() as admin:
        status = admin.get(f"/v1/profiling-runs/{run['id']}").raise_for_status().json()["status"]
    assert status == "published", status
    return chosen
