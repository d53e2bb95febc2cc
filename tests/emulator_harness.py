"""Start the ADB device emulator as its own process, the way a test bench would."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from profiler_service.local_server import stop_process


@dataclass
class Emulator:
    host: str
    port: int
    sandbox: Path
    proc: subprocess.Popen

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@contextmanager
def running_emulator(sandbox: Path, *extra: str) -> Iterator[Emulator]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "device_agents.emulator", "--port", "0", "--sandbox", str(sandbox), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # readiness: the emulator prints its address once it listens
        m = re.search(r"listening on ([\d.]+):(\d+)", line)
        if not m:
            raise RuntimeError(f"emulator did not start: {line}{proc.stdout.read() if proc.poll() is not None else ''}")
        yield Emulator(m.group(1), int(m.group(2)), sandbox, proc)
    finally:
        stop_process(proc, timeout_s=10)
