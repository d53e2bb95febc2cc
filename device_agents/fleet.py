"""One agent host, several devices: a worker thread per device, each with its own token and backend.

[{"backend": "local", "server": "http://...", "token": "..."},
 {"backend": "android", "server": "http://...", "token": "...", "adb": "10.0.0.7:5555", "taskset": "f0"}]

Optional per worker: "retry_for" (seconds a call is retried before the job is given up; default 600),
android: "serial" (USB), "runner", "perf_test_dir", "runtime_version", "cooldown", "key".
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from device_agents.android.backend import DeviceUnfit
from device_agents.client import AgentClient
from device_agents.loop import Agent, AgentStats

log = logging.getLogger("dnas.fleet")


def _backend(spec: dict[str, Any]):  # type: ignore[no-untyped-def]
    kind = spec.get("backend")
    if kind == "local":
        from device_agents.local.backend import LocalBackend

        return LocalBackend(cpus=spec.get("cpus"))
    if kind == "android":
        from device_agents.android.backend import AndroidBackend
        from device_agents.android.connection import AdbConnection

        conn = AdbConnection(tcp=spec.get("adb"), serial=spec.get("serial"),
                             key_path=Path(spec["key"]) if spec.get("key") else None)  # fmt: skip
        perf_test_dir = Path(spec["perf_test_dir"]) if spec.get("perf_test_dir") else None
        return AndroidBackend(
            conn,
            runner=spec.get("runner", "python"),
            taskset=spec.get("taskset", "auto"),
            cooldown_s=spec.get("cooldown", 0.0),
            perf_test_dir=perf_test_dir,
            runtime_version=spec.get("runtime_version"),
        )
    raise ValueError(f"worker backend must be 'local' or 'android', not {kind!r}")


def load_fleet(path: Path) -> list[dict[str, Any]]:
    workers = json.loads(path.read_text())
    if not isinstance(workers, list) or not workers:
        raise ValueError(f"{path}: expected a non-empty JSON list of workers")
    for i, w in enumerate(workers):
        missing = [k for k in ("backend", "server", "token") if not w.get(k)]
        if missing:
            raise ValueError(f"{path}: worker {i} is missing {', '.join(missing)}")
    return workers


def run_fleet(
    workers: list[dict[str, Any]], cache_dir: Path, *, wait: float = 20.0, exit_when_idle: bool = False
) -> list[AgentStats]:
    agents = [
        Agent(AgentClient(w["server"], w["token"], retry_for_s=float(w.get("retry_for", 600))), _backend(w),
              cache_dir=cache_dir, wait_seconds=wait, exit_when_idle=exit_when_idle)
        for w in workers
    ]  # fmt: skip

    def stop_all(signum: int, _frame: Any) -> None:
        for agent in agents:
            (agent.abort if agent.stopping.is_set() else agent.stopping).set()
        log.warning("%s: stopping %d workers after their current jobs", signal.Signals(signum).name, len(agents))

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    results: list[AgentStats | None] = [None] * len(agents)

    def work(i: int) -> None:
        try:
            results[i] = agents[i].run()
        except DeviceUnfit as exc:
            log.error("worker %d (%s) refused its device: %s", i, workers[i]["backend"], exc)
        except Exception:
            log.exception("worker %d (%s) stopped with an error", i, workers[i]["backend"])

    threads = [threading.Thread(target=work, args=(i,), name=f"worker-{i}") for i in range(len(agents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r or AgentStats() for r in results]
