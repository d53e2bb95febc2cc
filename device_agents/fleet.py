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
from device_agents.client import ProtocolError
from device_agents.loop import Agent, AgentStats
from device_agents.settings import AgentSettings

log = logging.getLogger("dnas.fleet")

RETRY_FIRST_S = 5.0  # a failed worker starts again after this, doubling up to RETRY_MAX_S while it keeps failing
RETRY_MAX_S = 300.0
# What a worker meets in the field (a device away or unfit, a call refused, an answer that is not JSON): one line.
EXPECTED = (DeviceUnfit, ProtocolError, ConnectionError, OSError, ValueError)


def make_agents(workers: list[AgentSettings], default_cache_dir: Path) -> list[Agent]:
    """One agent per worker, built from its settings exactly as `dnas agent local|android` builds its own."""
    return [w.make_agent(w.make_backend(), default_cache_dir) for w in workers]


def run_fleet(workers: list[AgentSettings], default_cache_dir: Path) -> list[AgentStats]:
    """Run every worker in its own thread until each stops (idle, or SIGINT/SIGTERM: a second one aborts).
    A worker that fails (its phone unplugged or not authorised, a call the service refuses, an answer that is
    not JSON) starts again with backoff, saying why in the log and on its device's dashboard page."""
    agents = make_agents(workers, default_cache_dir)
    names = [getattr(w, "backend", "?") for w in workers]

    def stop_all(signum: int, _frame: Any) -> None:
        for agent in agents:
            (agent.abort if agent.stopping.is_set() else agent.stopping).set()
        log.warning("%s: stopping %d workers after their current jobs", signal.Signals(signum).name, len(agents))

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    results = [AgentStats() for _ in agents]

    def work(i: int) -> None:
        delay = RETRY_FIRST_S
        while True:
            agent = agents[i]
            try:
                _add(results[i], agent.run())
                return
            except Exception as exc:  # a worker outlives its device and its service, as the loop outlives outages
                why = (
                    f"refused its device: {exc}"
                    if isinstance(exc, DeviceUnfit)
                    else f"failed: {type(exc).__name__}: {exc}"
                )
                if not isinstance(exc, EXPECTED):  # a bug: its traceback, once
                    log.exception("worker %d (%s) failed", i, names[i])
                _add(results[i], agent.stats)
            if agent.stopping.is_set():
                log.error("worker %d (%s) stopped: %s", i, names[i], why)
                return
            if agent.stats.done or agent.stats.failed:  # it worked a while: a new failure starts the backoff anew
                delay = RETRY_FIRST_S
            log.error("worker %d (%s) %s; starting it again in %.0f s", i, names[i], why, delay)
            _say(agent, why, delay)
            if agent.stopping.wait(delay):
                return
            agents[i] = workers[i].make_agent(workers[i].make_backend(), default_cache_dir)
            if agent.stopping.is_set():  # a signal between the wait and the swap reached the old agent only
                agents[i].stopping.set()
            delay = min(2 * delay, RETRY_MAX_S)

    threads = [threading.Thread(target=work, args=(i,), name=f"worker-{i}") for i in range(len(agents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _add(total: AgentStats, more: AgentStats) -> AgentStats:
    total.done, total.failed, total.batches = (
        total.done + more.done,
        total.failed + more.failed,
        total.batches + more.batches,
    )
    total.measure_s += more.measure_s
    return total


def _say(agent: Agent, why: str, retry_in_s: float) -> None:
    """Tell the service, for the device's page; the log has said it already if the service cannot hear it."""
    try:
        agent.client.report_status(why, retry_in_s)
    except Exception as exc:
        log.warning("could not report the worker's state to the service: %s", exc)
    finally:
        agent.client.close()
