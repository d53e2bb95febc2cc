"""One agent host, several devices: a worker thread per device, each with its own token and backend.

A fleet file is a JSON list of workers, each with the options `dnas agent local` or `dnas agent android` take
(device_agents.settings, the one definition of them), as keys:

[{"backend": "local", "server": "http://...", "token_file": "/run/dnas/host.token", "cpus": [1]},
 {"backend": "android", "server": "http://...", "token": "...", "adb": "10.0.0.7:5555", "taskset": "f0",
  "thermal_wait": 300, "batch_size": 100}]
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

from device_agents.android.backend import DeviceUnfit
from device_agents.loop import Agent, AgentStats
from device_agents.settings import AgentSettings

log = logging.getLogger("dnas.fleet")


def make_agents(workers: list[AgentSettings], default_cache_dir: Path) -> list[Agent]:
    """One agent per worker, built from its settings exactly as `dnas agent local|android` builds its own."""
    return [w.make_agent(w.make_backend(), default_cache_dir) for w in workers]


def run_fleet(workers: list[AgentSettings], default_cache_dir: Path) -> list[AgentStats]:
    """Run every worker in its own thread until each stops (idle, or SIGINT/SIGTERM: a second one aborts)."""
    agents = make_agents(workers, default_cache_dir)
    names = [getattr(w, "backend", "?") for w in workers]

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
            log.error("worker %d (%s) refused its device: %s", i, names[i], exc)
        except Exception:
            log.exception("worker %d (%s) stopped with an error", i, names[i])

    threads = [threading.Thread(target=work, args=(i,), name=f"worker-{i}") for i in range(len(agents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r or AgentStats() for r in results]
