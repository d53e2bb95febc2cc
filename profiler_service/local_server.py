"""Run the real service (`python -m dnas serve`: migrations, then uvicorn) on loopback as a child process.

Used by the tests, the benches, the agent conformance suite and the quickstart's embedded service.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from search.tables.client import ServiceClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    url: str
    admin_token: str
    proc: subprocess.Popen
    log: Path

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"} if token != "" else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _die_with_parent() -> None:
    """If whoever started the service is killed outright, the service goes too instead of lingering."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_until_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    """Readiness: poll the health endpoint until it answers, failing fast if the server process died. The
    deadline only bounds a server that hangs: on a loaded 2-core host the imports alone took over 90 s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"service not healthy after {timeout_s}s:\n{log.read_text()[-3000:]}")


@contextmanager
def running_service(
    db_url: str,
    workdir: Path,
    *,
    workers: int = 1,
    lease_seconds: float = 30,
    port: int | None = None,
    admin_token: str | None = None,
    **env: str,
) -> Iterator[Service]:
    port = port or free_port()
    if admin_token is None:  # "" is kept: an empty setting, as compose leaves it (the token file then rules)
        admin_token = f"local-admin-{secrets.token_urlsafe(32)}"  # the service refuses short ones
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"service-{port}.log"
    environ = os.environ | {
        "DNAS_SERVICE_DATABASE_URL": db_url,
        "DNAS_SERVICE_ADMIN_TOKEN": admin_token,
        "DNAS_SERVICE_ARTIFACT_DIR": str(workdir / "artifacts"),
        "DNAS_SERVICE_HOST": "127.0.0.1",
        "DNAS_SERVICE_PORT": str(port),
        "DNAS_SERVICE_WORKERS": str(workers),
        "DNAS_SERVICE_LEASE_SECONDS": str(lease_seconds),
        **env,
    }
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dnas", "serve"], env=environ, stdout=fh, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proc, log)
        yield Service(url, admin_token, proc, log)
    finally:
        stop_process(proc, timeout_s=20)


def stop_process(proc: subprocess.Popen, timeout_s: float) -> int | None:
    """SIGTERM, then SIGKILL if it has not exited in time. Returns the exit status, or None if it was killed."""
    proc.terminate()
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


# The tests' and benches' shorthands over an httpx client (`svc.client()`): the one typed client does the work,
# so there is one run waiter (search/tables/client.py), which stops on every final status.
def wait_for_run(client: httpx.Client, run_id: int, timeout_s: float = 300) -> dict:
    return ServiceClient.over(client).wait_for_run(run_id, timeout_s, poll_s=0.2)


def register(client: httpx.Client, name: str, platform: str = "linux") -> dict:
    return ServiceClient.over(client).register_device(name, platform)


def start_run(client: httpx.Client, device_id: int, space: dict, config: dict | None = None) -> dict:
    return ServiceClient.over(client).start_run(device_id, space, config)
