"""What a phone's state does to its timings, read over adb without root: thermal throttling status, battery
temperature, the CPU clusters (to pin to the big cores) and their governors.

`thermal_zone0` is often not a CPU sensor (on many SoCs it is the battery or the skin), so the agent reads
what Android itself uses to throttle: `dumpsys thermalservice` ("Thermal Status: N", 0 = none, 1 = light,
2 = moderate, 3 = severe, ...) and the battery temperature from `dumpsys battery` (tenths of a degree).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from device_agents.android.connection import AdbConnection

log = logging.getLogger("dnas.android")

THERMAL_STATUS_NAMES = ("none", "light", "moderate", "severe", "critical", "emergency", "shutdown")
_CPU_FILE = re.compile(r"cpu(\d+)/cpufreq/(cpuinfo_max_freq|scaling_governor)\s+(\S+)")


@dataclass
class Cpus:
    """Per-core maximum frequency (kHz) and governor, from /sys/devices/system/cpu/cpu*/cpufreq."""

    max_khz: dict[int, int] = field(default_factory=dict)
    governors: dict[int, str] = field(default_factory=dict)

    def big_core_mask(self) -> str | None:
        """Hex mask of the cores with the highest maximum frequency (the prime or big cluster): where a
        single-threaded measurement is fastest and least disturbed. None when the cores cannot be told apart
        (all equal, or unreadable): then nothing is pinned."""
        return self.fastest_cores_mask(1)

    def fastest_cores_mask(self, threads: int) -> str | None:
        """Hex mask of at least `threads` cores, fastest first, in whole clusters (cores of one maximum
        frequency): on a phone with one prime core, 4 threads get the prime core and the next cluster, never
        four threads on one core. `threads` 0 (onnxruntime picks one thread per core) takes every core. None
        when the cores cannot be told apart (all equal, or unreadable): then nothing is pinned."""
        if not self.max_khz or len(set(self.max_khz.values())) < 2:
            return None
        need = threads if threads > 0 else len(self.max_khz)
        chosen: list[int] = []
        for khz in sorted(set(self.max_khz.values()), reverse=True):
            chosen += [cpu for cpu, k in self.max_khz.items() if k == khz]
            if len(chosen) >= need:
                break
        return format(sum(1 << cpu for cpu in chosen), "x")


def read_cpus(conn: AdbConnection) -> Cpus:
    script = (
        "for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq "
        "/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor; "
        'do [ -r "$f" ] && echo "$f $(cat "$f")"; done'
    )
    cpus = Cpus()
    for line in conn.shell(script).output.splitlines():
        if m := _CPU_FILE.search(line):
            cpu, what, value = int(m.group(1)), m.group(2), m.group(3)
            if what == "cpuinfo_max_freq" and value.isdigit():
                cpus.max_khz[cpu] = int(value)
            elif what == "scaling_governor":
                cpus.governors[cpu] = value
    return cpus


def thermal_status(conn: AdbConnection) -> int | None:
    """Android's thermal throttling status (0 = none); None where thermalservice does not answer (Android < 10)."""
    res = conn.shell("dumpsys thermalservice 2>/dev/null")
    m = re.search(r"Thermal Status:\s*(\d+)", res.output)
    return int(m.group(1)) if m else None


def battery_temperature_c(conn: AdbConnection) -> float | None:
    res = conn.shell("dumpsys battery 2>/dev/null")
    m = re.search(r"^\s*temperature:\s*(-?\d+)", res.output, re.M)
    return int(m.group(1)) / 10 if m else None


def snapshot(conn: AdbConnection) -> dict[str, Any]:
    status = thermal_status(conn)
    return {
        "thermal_status": status,
        "thermal_status_name": THERMAL_STATUS_NAMES[status] if status is not None and status < 7 else None,
        "battery_temp_c": battery_temperature_c(conn),
    }


def wait_until_cool(conn: AdbConnection, *, max_wait_s: float, poll_s: float = 10.0) -> dict[str, Any]:
    """Wait while Android reports throttling (status > 0), up to `max_wait_s`. Returns the state it measured
    from, with how long it waited and whether it gave up waiting (then the batch is measured anyway, and its
    context says so: a phone in a hot room may never reach 0)."""
    start = time.monotonic()
    state = snapshot(conn)
    while (state["thermal_status"] or 0) > 0 and time.monotonic() - start < max_wait_s:
        log.warning("thermal status %s (%s): waiting for the device to cool before measuring",
                    state["thermal_status"], state["thermal_status_name"])  # fmt: skip
        time.sleep(min(poll_s, max(0.0, max_wait_s - (time.monotonic() - start))))
        state = snapshot(conn)
    waited = time.monotonic() - start
    return state | {"thermal_wait_s": round(waited, 1), "still_throttled": (state["thermal_status"] or 0) > 0}
