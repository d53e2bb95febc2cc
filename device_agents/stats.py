"""Robust summary of timed runs: the median and percentiles carry the result, so a few outliers (a context
switch, a page fault) do not move it."""

from __future__ import annotations

from typing import Any

import numpy as np


def summarise(samples_us: list[float]) -> dict[str, Any]:
    if not samples_us:
        raise ValueError("no timed runs to summarise")
    a = np.asarray(samples_us, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError("timings must be finite and positive")
    p10, median, p90 = np.percentile(a, [10, 50, 90])
    return {
        "median_us": float(median),
        "mean_us": float(a.mean()),
        "p10_us": float(p10),
        "p90_us": float(p90),
        "std_us": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "n": int(a.size),
    }
