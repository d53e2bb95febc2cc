"""onnxruntime_perf_test output, as its builds print it (captured; trimmed to the statistics block)."""

import pytest

from device_agents.android.backend import perf_test_summary
from device_agents.android.perf_test import PerfTestParseError, parse_perf_test

NEWER = """Session creation time cost: 0.0312 s
First inference time cost: 3 ms
Total inference time cost: 0.046455 s
Total inference requests: 50
Average inference time cost: 0.9291 ms
Total inference run time: 0.046932 s
Number of inferences per second: 1065.37
Avg CPU usage: 98 %
Peak working set size: 24567808 bytes
Min Latency: 0.000893 s
Max Latency: 0.00112 s
P50 Latency: 0.000921 s
P90 Latency: 0.000987 s
P95 Latency: 0.00101 s
P99 Latency: 0.00111 s
P999 Latency: 0.00112 s
"""

NEWEST = NEWER.replace("Average inference time cost: 0.9291 ms", "Average inference time cost total: 0.9291 ms")

OLDER = """Total time cost:0.046455
Total iterations:50
Average inference time cost: 0.9291 ms
Avg CPU usage:98
Peak working set size:24567808
Min Latency is 0.000893sec
Max Latency is 0.00112sec
P50 Latency is 0.000921sec
P90 Latency is 0.000987sec
P95 Latency is 0.00101sec
P99 Latency is 0.00111sec
P999 Latency is 0.00112sec
"""


@pytest.mark.parametrize("text", [NEWER, NEWEST, OLDER], ids=["newer", "newest-total", "older-is-sec"])
def test_every_variant_parses_to_microseconds(text):
    stats = parse_perf_test(text)
    assert stats["p50_us"] == pytest.approx(921.0)
    assert stats["mean_us"] == pytest.approx(929.1)
    assert stats["p90_us"] == pytest.approx(987.0)
    assert stats["min_us"] == pytest.approx(893.0)
    summary = perf_test_summary(stats, 50)
    assert summary["p10_us"] <= summary["median_us"] <= summary["p90_us"]
    assert summary["n"] == 50


@pytest.mark.parametrize(
    "text",
    ["", "Segmentation fault", NEWER.replace("P50 Latency: 0.000921 s", ""), NEWER.replace("0.000921", "0")],
)
def test_unparseable_or_zero_output_fails_loudly(text):
    with pytest.raises(PerfTestParseError):
        parse_perf_test(text)
