"""What a device backend must do; the agent loop is the same for every backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


class MeasurementError(Exception):
    """The op could not be measured on this device; the message becomes the job's failure reason."""


@dataclass
class Timing:
    """What a runner measured for one model, in one of three forms:
    - `round_samples_us`: the timed runs of every interleaved round (the batch form);
    - `samples_us`: every timed run of one block (the single-job form);
    - `summary`: the statistics fields of a result, from runners that print only statistics."""

    samples_us: list[float] | None = None
    context: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    round_samples_us: list[list[float]] | None = None


@dataclass(frozen=True)
class BatchPlan:
    """How a batch is measured (from the jobs' config): see search/measurement/rounds.py."""

    threads: int
    warmup: int
    rounds: int
    runs_per_round: int
    seed: int

    @classmethod
    def from_config(cls, config: dict[str, Any], seed: int) -> BatchPlan:
        runs = int(config.get("runs", 60))
        rounds = int(config.get("rounds") or min(20, runs))
        per_round = int(config.get("runs_per_round") or max(1, runs // rounds))
        return cls(int(config.get("threads", 1)), int(config.get("warmup", 10)), rounds, per_round, seed)


class Backend(Protocol):
    name: str

    def fingerprint(self) -> dict[str, Any]:
        """Model, SoC, OS, runtime and version, cores: reported once at start, stamped on every table."""
        ...

    def measure(self, model: Path, *, threads: int, warmup: int, runs: int) -> Timing: ...

    def close(self) -> None: ...


@runtime_checkable
class BatchBackend(Backend, Protocol):
    """A backend that can hold every model of a batch open and measure them in interleaved rounds."""

    def measure_batch(self, models: dict[str, Path], plan: BatchPlan) -> dict[str, Timing | MeasurementError]: ...
