"""Helpers for tests: the service runner lives in profiler_service.local_server; agents and runs here."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from profiler_service.local_server import Service, free_port, register, running_service, wait_for_run
from profiler_service.local_server import start_run as _start_run

__all__ = ["Service", "free_port", "register", "running_service", "start_agent", "start_run", "wait_for_run"]


def start_agent(service: Service, token: str, workdir: Path, *extra: str) -> subprocess.Popen:
    log = open(workdir / f"agent-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [sys.executable, "-m", "dnas", "agent", "local", "--server", service.url, "--token", token,
         "--cache-dir", str(workdir / "agent-cache"), *extra],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


SMALL_SPACE = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["ir_k3_e1", "ir_k5_e6", "skip"]}
FAST_CONFIG = {"threads": 1, "warmup": 2, "runs": 10}


def start_run(client: httpx.Client, device_id: int, space: dict | None = None, config: dict | None = None) -> dict:
    """A run of the small test space unless told otherwise."""
    return _start_run(client, device_id, space or SMALL_SPACE, config or FAST_CONFIG)
