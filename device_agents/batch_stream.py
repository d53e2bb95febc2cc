"""Reads the JSON lines a batch runner (`ort_runner.py --batch`) prints, as they arrive, into results.

The lines are `{"ready": id}` or `{"id", "error"}` per model as it loads, `{"round": r}` after each round,
`{"id", "round_samples_us"}` per model, then `{"done": true, "context"}`. Fed one line at a time, so a
backend that reads a stream (a pipe, an adb shell) shows progress while a long batch runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from device_agents.backend import MeasurementError, Timing

log = logging.getLogger("dnas.agent")


class BatchStream:
    def __init__(self, keys: list[str], rounds: int, on_progress: Callable[[str], None] | None = None) -> None:
        self.keys = keys
        self.rounds = rounds
        self.results: dict[str, Timing | MeasurementError] = {}
        self.settled: set[str] = set()  # loaded or failed to load
        self.context: dict[str, Any] | None = None
        self.noise: list[str] = []  # lines that were not JSON (warnings the runtime printed)
        self.on_progress = on_progress or (lambda text: log.info("%s", text))

    @property
    def done(self) -> bool:
        return self.context is not None

    def first_unsettled(self) -> str | None:
        """The model that was loading when the runner died, if it died while loading."""
        return next((k for k in self.keys if k not in self.settled), None)

    def feed(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        try:
            msg = json.loads(line)
        except ValueError:
            self.noise.append(line)
            del self.noise[:-20]
            return
        if not isinstance(msg, dict):
            return
        if "ready" in msg:
            self.settled.add(str(msg["ready"]))
        elif "error" in msg and "id" in msg:
            self.settled.add(str(msg["id"]))
            self.results[str(msg["id"])] = MeasurementError(msg["error"])
        elif "error" in msg:
            raise MeasurementError(msg["error"])
        elif "round" in msg:
            self.on_progress(f"round {msg['round']}/{self.rounds}")
        elif "round_samples_us" in msg:
            self.results[str(msg["id"])] = Timing(round_samples_us=msg["round_samples_us"])
        elif msg.get("done"):
            self.context = dict(msg.get("context") or {})

    def finish(self, extra_context: dict[str, Any]) -> dict[str, Timing | MeasurementError]:
        """Every model's result, each with the runner's context and the backend's."""
        context = (self.context or {}) | extra_context
        for timing in self.results.values():
            if isinstance(timing, Timing):
                timing.context = dict(context)
        return dict(self.results)
