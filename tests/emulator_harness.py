"""Start the ADB device emulator as its own process, the way a test bench would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from profiler_service.local_server import stop_process


def require_c_compiler() -> None:
    """The perf-test stand-in is a real ELF that links `libc++_shared.so` only when a C compiler builds it
    (device_agents/emulator/perf_test_standin.py); without one, the checks of the C++ runtime and the ABI
    have nothing to check. In CI a missing compiler is a failure (`make system-deps` installs gcc), as a
    missing PostgreSQL or adb is; elsewhere the test skips."""
    if shutil.which("cc") or shutil.which("gcc"):
        return
    if os.environ.get("CI"):
        pytest.fail("a C compiler (cc or gcc; apt-get install gcc libc6-dev) is required in CI")
    pytest.skip("no C compiler: the perf-test stand-in cannot be built as an ELF linking libc++_shared.so")


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
