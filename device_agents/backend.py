"""What a device backend must do; the agent loop is the same for every backend."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


class MeasurementError(Exception):
    """The op could not be measured on this device; the message becomes the job's failure reason."""


class DeviceUnavailable(Exception):
    """The device went away (cable pulled, Wi-Fi dropped, rebooting): nothing is wrong with the jobs. The agent
    gives the batch back, leases nothing until `reconnect()` succeeds, and never reports the jobs failed for it.
    A backend that raises it has `reconnect()`, which raises it again while the device is still away."""


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


PRECISIONS = ("fp32", "int8")  # what a config may ask for (search/space/quantize.py)


def precision_refusal(backend: object, precision: str) -> str | None:
    """Why this backend cannot measure a job of this precision, or None if it can. A backend lists what it runs
    in `precisions`; one that does not say is taken to run fp32 only: an int8 model measured by a runtime or
    execution provider that cannot take QDQ would be stored as an int8 time that is not one."""
    can = tuple(getattr(backend, "precisions", ("fp32",)))
    if precision in can:
        return None
    name = getattr(backend, "name", type(backend).__name__)
    why = getattr(backend, "precision_note", "") or f"it measures {', '.join(can)} only"
    return f"the {name} backend cannot measure precision {precision}: {why}"


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

    def measure_batch(
        self, models: dict[str, Path], plan: BatchPlan, stop: threading.Event | None = None
    ) -> dict[str, Timing | MeasurementError]:
        """Every model's timing or error. Once `stop` is set (the agent was told to give its work back now) a
        backend that can ends at its next visit and returns only what is final: the models that failed, and
        any measured in every round. The agent gives back the models it returns nothing for."""
        ...
