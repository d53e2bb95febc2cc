"""Helpers for tests: the service runner lives in profiler_service.local_server; agents and runs here."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from profiler_service import local_server
from profiler_service.local_server import Service, free_port, register, wait_for_run
from profiler_service.local_server import start_run as _start_run
from tests import artifact_cache
from tests.waiting import wait_until

__all__ = ["AgentProcess", "Service", "free_port", "register", "running_service", "serve_app", "start_agent",
           "start_run", "wait_for_run"]  # fmt: skip


@contextmanager
def running_service(db_url: str, workdir: Path, **kwargs) -> Iterator[Service]:  # type: ignore[no-untyped-def]
    """profiler_service.local_server.running_service, its artifact folder seeded with the ops and networks
    this test run has exported so far, and what it exports kept for the next (tests/artifact_cache.py)."""
    shared = "DNAS_SERVICE_ARTIFACT_DIR" not in kwargs
    artifacts = workdir / "artifacts"  # where local_server puts them
    if shared:
        artifact_cache.seed(artifacts)
    try:
        with local_server.running_service(db_url, workdir, **kwargs) as service:
            yield service
    finally:
        if shared:
            artifact_cache.harvest(artifacts)


class AgentProcess(subprocess.Popen):
    """An agent's process, with where it logs."""

    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_agent(service: Service, token: str, workdir: Path, *extra: str) -> AgentProcess:
    """A local agent for this service. Its token goes in the environment, never argv (`ps` shows argv to every
    user of the machine)."""
    log_path = workdir / f"agent-{time.monotonic_ns()}.log"
    log = open(log_path, "w")  # noqa: SIM115 - lives as long as the process
    proc = AgentProcess(
        [sys.executable, "-m", "dnas", "agent", "local", "--server", service.url,
         "--cache-dir", str(workdir / "agent-cache"), *extra],
        stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"DNAS_AGENT_TOKEN": token},
    )  # fmt: skip
    proc.log_path = log_path
    return proc


SMALL_SPACE = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["ir_k3_e1", "ir_k5_e6", "skip"]}
FAST_CONFIG = {"threads": 1, "warmup": 2, "runs": 10}


def start_run(client: httpx.Client, device_id: int, space: dict | None = None, config: dict | None = None) -> dict:
    """A run of the small test space unless told otherwise."""
    return _start_run(client, device_id, space or SMALL_SPACE, config or FAST_CONFIG)


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/v1/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def serve_app(app: object) -> Iterator[str]:
    """An app object built in the test (wrapped in a fault, given a tiny pool, two apps side by side) served by
    uvicorn on loopback in this process; yields its URL once /v1/health answers. `running_service` serves a
    whole `dnas serve` process instead, which a test cannot reach inside."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(base), what="the service to answer /v1/health", timeout_s=60)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)
