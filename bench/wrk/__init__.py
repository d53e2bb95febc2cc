"""Drive HTTP load with Debian's `wrk` (a load generator in C: the Python-thread clients of the first bench.load
measured themselves as much as the service) and serve reference bytes from nginx, for bench/load.py.

Every wrk run appends report.lua, which prints one `WRK_JSON {...}` line: nothing parses wrk's text summary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

HERE = Path(__file__).parent


def require(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None)
    if path is None:
        raise SystemExit(f"bench.load needs `{tool}`: apt-get install -y wrk nginx")
    return path


def run_wrk(url: str, *, connections: int, seconds: float, threads: int = 2, headers: dict[str, str] | None = None,
            script: str | None = None, env: dict[str, str] | None = None, workdir: Path) -> dict:  # fmt: skip
    """One wrk run against `url`: requests/s, p50/p90/p99 in ms, non-2xx and socket errors, the script's counts."""
    lua = workdir / f"wrk-{script or 'get'}.lua"
    lua.write_text(((HERE / f"{script}.lua").read_text() if script else "") + (HERE / "report.lua").read_text())
    cmd = [require("wrk"), f"-t{min(threads, connections)}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
           "-s", str(lua), "--timeout", "10s"]  # fmt: skip
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, env=os.environ | (env or {}), check=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no report:\n{out.stdout}\n{out.stderr}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    seconds_run = raw["duration_us"] / 1e6
    return {
        "connections": connections,
        "requests": raw["requests"],
        "per_s": round(raw["requests"] / seconds_run, 1),
        "p50_ms": round(raw["p50_us"] / 1e3, 2),
        "p90_ms": round(raw["p90_us"] / 1e3, 2),
        "p99_ms": round(raw["p99_us"] / 1e3, 2),
        "max_ms": round(raw["max_us"] / 1e3, 1),
        "non_2xx": raw["non_2xx"],
        "socket_errors": raw["socket_errors"],
        **({"counts": raw["counts"]} if raw["counts"] else {}),
    }


NGINX_CONF = """
daemon off;
master_process on;
user root;
worker_processes {workers};
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    types {{ application/json json; }}
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        gzip_static on;
        location / {{ try_files $uri =404; }}
    }}
}}
"""


@contextmanager
def nginx_serving(body: bytes, gzipped: bytes, *, port: int, workers: int, workdir: Path) -> Iterator[str]:
    """nginx with `workers` worker processes serving `body` (and its gzip bytes, to clients that accept gzip)
    at the returned URL: what the same bytes cost with no application in the way."""
    root = workdir / "nginx"
    (root / "www").mkdir(parents=True, exist_ok=True)
    (root / "www" / "table.json").write_bytes(body)
    (root / "www" / "table.json.gz").write_bytes(gzipped)
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, root=root, port=port))
    proc = subprocess.Popen([require("nginx"), "-c", str(conf), "-p", str(root)], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/table.json"
    try:
        _wait_listening(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _wait_listening(url: str, proc: subprocess.Popen) -> None:
    import httpx

    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            proc_wait(proc, 0.05)
    raise TimeoutError("nginx did not answer")


def proc_wait(proc: subprocess.Popen, seconds: float) -> None:
    """Wait for the process up to `seconds` (a bounded pause that ends early if it exits)."""
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=seconds)
