"""What a device backend must do; the agent loop is the same for every backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class MeasurementError(Exception):
    """The op could not be measured on this device; the message becomes the job's failure reason."""


@dataclass
class Timing:
    """Either every timed run (`samples_us`), or, from runners that print only statistics, a `summary` with
    the statistics fields of a result (median_us, mean_us, p10_us, p90_us, std_us, n)."""

    samples_us: list[float] | None
    context: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None


class Backend(Protocol):
    name: str

    def fingerprint(self) -> dict[str, Any]:
        """Model, SoC, OS, runtime and version, cores: reported once at start, stamped on every table."""
        ...

    def measure(self, model: Path, *, threads: int, warmup: int, runs: int) -> Timing: ...

    def close(self) -> None: ...
