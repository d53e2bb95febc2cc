"""Interleaved rounds: the one measurement rule every runner shares.

On a shared machine (or a phone that heats up) the speed of the device drifts over seconds to minutes, and
neighbours come and go. Timing one model after another in blocks turns that drift into error between models.
So a batch is measured in rounds: every round visits every model once, in a fresh random order, with one
untimed run and then `runs_per_round` timed runs per visit. Each model's estimate is the median over rounds
of each round's median: every model sees the same mixture of conditions, and a disturbed round moves no
estimate. Measured on this project's CI machine (2 cores, onnxruntime 1.32), the rounds, not the runs per
visit, are what buys reproducibility (docs/concepts/measurement.md).

Standalone on purpose (standard library only): it is pushed to devices next to `ort_runner.py`, and the
iOS app implements the same rule (same order of operations, same estimator).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterator, Sequence
from typing import Any

ESTIMATOR = "median of per-round medians"


def visit_orders(n_models: int, rounds: int, seed: int) -> Iterator[list[int]]:
    """One fresh random permutation of the models per round, reproducible from the seed."""
    rng = random.Random(seed)
    order = list(range(n_models))
    for _ in range(rounds):
        rng.shuffle(order)
        yield list(order)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), so host and device agree."""
    data = sorted(values)
    if not data:
        raise ValueError("no values")
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def estimate(round_medians: Sequence[float]) -> float:
    """The estimator: median over rounds. Used for tables, for networks, and for the noise ceiling (the
    same estimator on even rounds against odd rounds)."""
    return statistics.median(round_medians)


def summarise_rounds(round_samples: Sequence[Sequence[float]]) -> dict[str, Any]:
    """A result body's statistics from the timed runs of each round (microseconds).

    median_us is the estimate; mean, p10, p90 and std describe the spread *between rounds*, which is what
    drift and neighbours move; n counts every timed run."""
    if not round_samples or any(not r for r in round_samples):
        raise ValueError("every round needs at least one timed run")
    flat = [s for r in round_samples for s in r]
    if not all(math.isfinite(s) and s > 0 for s in flat):
        raise ValueError("timings must be finite and positive")
    medians = [statistics.median(r) for r in round_samples]
    return {
        "median_us": estimate(medians),
        "mean_us": statistics.fmean(medians),
        "p10_us": percentile(medians, 10),
        "p90_us": percentile(medians, 90),
        "std_us": statistics.stdev(medians) if len(medians) > 1 else 0.0,
        "n": len(flat),
        "rounds": len(medians),
        "round_medians_us": medians,
        "estimator": ESTIMATOR,
    }
