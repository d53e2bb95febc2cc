"""Waiting for something another process does: poll with a pause and a deadline, never spin.

A loop with no pause takes the CPU the agent under test needs (on a 2-core machine, the core it measures on),
and a loop with no deadline hangs the run when that agent stalls; this one fails with what it waited for.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T],
    *,
    what: str,
    timeout_s: float,
    interval_s: float = 0.2,
    alive: Sequence[subprocess.Popen] = (),
) -> T:
    """Call `probe` until it returns something truthy, and return that.

    Fails when `timeout_s` passes, or as soon as one of the `alive` processes exits (what we wait for would
    then never happen).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        for proc in alive:
            if proc.poll() is not None:
                # Not its arguments: a test harness may still pass a token there, and this ends up in CI logs.
                raise AssertionError(f"waiting for {what}: process {proc.pid} exited with {proc.returncode}")
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"waiting for {what}: not after {timeout_s:.0f} s (last probe: {result!r})")
        time.sleep(interval_s)
