"""Parse `onnxruntime_perf_test` output, in every variant its builds print.

It does one warm-up run itself, then `-r N` timed runs, and prints an average in milliseconds and, when asked
with `-s`, percentiles in seconds, not the individual runs. Builds differ in wording:
- older (the tool's README sample): `Total iterations:N`, `Average time cost:X ms`, `P50 Latency is Xsec`;
- newer: `Total inference requests: N`, `Average inference time cost: X ms`, `P50 Latency: X s`;
- newest: `Average inference time cost total: X ms`, and `Runs:N` again in the statistics block.
An output with no latency in it, or no count of the runs it timed, is an error, never 0 or a guess.
"""

from __future__ import annotations

import re

_FLOAT = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_AVERAGE = re.compile(rf"Average (?:inference )?time cost(?: total)?:\s*{_FLOAT}\s*ms")
_PCT_NEW = re.compile(rf"^(Min|Max|P50|P90|P95|P99|P999) Latency:\s*{_FLOAT}\s*s\b", re.M)
_PCT_OLD = re.compile(rf"^(Min|Max|P50|P90|P95|P99|P999) Latency is\s*{_FLOAT}\s*sec", re.M)
_RUNS = re.compile(r"^(?:Total inference requests|Total iterations|Runs):\s*(\d+)\s*$", re.M)


class PerfTestParseError(ValueError):
    pass


def parse_perf_test(text: str) -> dict[str, float]:
    """Statistics in microseconds (median (P50), mean, p90, min, max, ...) and n, the timed runs it printed."""
    out: dict[str, float] = {}
    if m := _AVERAGE.search(text):
        out["mean_us"] = float(m.group(1)) * 1e3
    for name, value in [*_PCT_NEW.findall(text), *_PCT_OLD.findall(text)]:
        out[f"{name.lower()}_us"] = float(value) * 1e6
    if "p50_us" not in out or "mean_us" not in out:
        raise PerfTestParseError(f"no latency in onnxruntime_perf_test output (run it with -s): {text[-300:]!r}")
    if any(v <= 0 for k, v in out.items() if k.endswith("_us")):
        raise PerfTestParseError(f"non-positive latency parsed from onnxruntime_perf_test: {out}")
    counts = {int(n) for n in _RUNS.findall(text)}
    if len(counts) != 1:
        what = "no count of timed runs" if not counts else f"disagreeing run counts {sorted(counts)}"
        raise PerfTestParseError(f"{what} in onnxruntime_perf_test output: {text[-300:]!r}")
    out["n"] = counts.pop()
    if out["n"] < 1:
        raise PerfTestParseError("onnxruntime_perf_test timed no runs")
    return out
