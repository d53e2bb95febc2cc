"""The heartbeat thread keeps a batch's lease whatever its calls meet: a service that never answers one (the
call ends before the next is due, not after the client's 150 s read timeout) or an answer that breaks in an
unexpected way (logged, and the next heartbeat still goes out).

The real service and the real agent loop over HTTP on loopback; in front of the service, a fault on the first
heartbeat only (tests/faulty_service.py). The tests wait for the second heartbeat to reach the service: with
a stalled or dead heartbeat thread it never comes while the batch runs."""

from __future__ import annotations

import logging
import threading

import pytest

from device_agents.client import AgentClient
from device_agents.local.backend import LocalBackend
from device_agents.loop import Agent
from tests.faulty_service import admin_client, serving
from tests.service_harness import register

SPACE = {"resolution": 64, "width": 0.5, "num_classes": 10, "candidates": ["ir_k3_e1", "ir_k5_e6", "skip"]}
LONG = {"threads": 1, "warmup": 1, "rounds": 1000, "runs_per_round": 10}  # minutes unless given back


@pytest.mark.parametrize("fault", ["stall", "garbled"])
def test_a_faulty_heartbeat_does_not_stop_the_next_one(tmp_path, caplog, fault):
    caplog.set_level(logging.WARNING, logger="dnas.agent")
    with serving(tmp_path, "/v1/agent/heartbeat", fault, lease_seconds=3) as (base, app), admin_client(base) as admin:
        device = register(admin, "beating")
        body = {"device_id": device["id"], "space": SPACE, "config": LONG, "anchors": 0}
        admin.post("/v1/profiling-runs", json=body).raise_for_status()
        agent = Agent(AgentClient(base, device["agent_token"], retry_for_s=30), LocalBackend(cpus=[1]),
                      cache_dir=tmp_path / "cache", wait_seconds=1, exit_when_idle=True)  # fmt: skip
        worker = threading.Thread(target=agent.run, name="agent")
        worker.start()
        try:
            # Heartbeats are due every second (a 3 s lease); the batch measures for minutes.
            assert app.second.wait(timeout=60), "no heartbeat after the faulty one"
        finally:
            agent.stopping.set()
            agent.abort.set()  # the batch is given back at its next round
            worker.join(timeout=600)
    assert not worker.is_alive()
    if fault == "stall":
        assert "heartbeat failed" in caplog.text and "ReadTimeout" in caplog.text, caplog.text[-2000:]
    else:
        assert "heartbeat failed unexpectedly; beating on" in caplog.text, caplog.text[-2000:]
        assert "DecodingError" in caplog.text, caplog.text[-2000:]
