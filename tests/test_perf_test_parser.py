"""onnxruntime_perf_test output as its builds print it, each fixture with its own numbers, and the perf-test
runner driven through adb against the emulator with a stand-in for the tool."""

import pytest

from device_agents.android.backend import AndroidBackend, perf_test_summary
from device_agents.android.connection import AdbConnection
from device_agents.android.perf_test import PerfTestParseError, parse_perf_test
from tests.emulator_harness import running_emulator

# Current builds (-m times -r 50 -s): "total" in the average, and the statistics block repeats CPU, memory and
# the run count (Runs:N), as in the outputs users post from these builds.
NEWEST = """Setting intra_op_num_threads to 1
Session creation time cost: 0.0218 s
First inference time cost: 1 ms
Total inference time cost: 0.030271 s
Total inference requests: 50
Average inference time cost total: 0.605420 ms
Total inference run time: 0.030302 s
Number of inferences per second: 1650.06
Avg CPU usage: 96 %
Peak working set size: 22011904 bytes
Avg CPU usage:96
Peak working set size:22011904
Runs:50
Min Latency: 0.000583 s
Max Latency: 0.000712 s
P50 Latency: 0.000598 s
P90 Latency: 0.000631 s
P95 Latency: 0.000655 s
P99 Latency: 0.000712 s
P999 Latency: 0.000712 s
"""

# Builds before the "total" wording (-r 100 -s).
NEWER = """Session creation time cost: 0.0412 s
First inference time cost: 4 ms
Total inference time cost: 0.142913 s
Total inference requests: 100
Average inference time cost: 1.42913 ms
Total inference run time: 0.143377 s
Number of inferences per second: 697.46
Avg CPU usage: 97 %
Peak working set size: 31842304 bytes
Min Latency: 0.00138 s
Max Latency: 0.00171 s
P50 Latency: 0.00141 s
P90 Latency: 0.00149 s
P95 Latency: 0.00155 s
P99 Latency: 0.00168 s
P999 Latency: 0.00171 s
"""

# The oldest wording, as in the tool's README sample output (-r 1000 -s): no space after the colons,
# "Total iterations", "Average time cost", "Latency is ...sec".
OLDER = """Total time cost:2.31776
Total iterations:1000
Average time cost:2.31776 ms
Total run time:2.32049 s
Min Latency is 0.00221sec
Max Latency is 0.00297sec
P50 Latency is 0.00229sec
P90 Latency is 0.00241sec
P95 Latency is 0.00248sec
P99 Latency is 0.00276sec
P999 Latency is 0.00297sec
"""

EXPECTED = {  # text -> (p50, mean, p90, min) in microseconds and n, as each output states them
    "newest-total": (NEWEST, (598.0, 605.42, 631.0, 583.0), 50),
    "newer": (NEWER, (1410.0, 1429.13, 1490.0, 1380.0), 100),
    "older-is-sec": (OLDER, (2290.0, 2317.76, 2410.0, 2210.0), 1000),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_every_variant_parses_to_microseconds_and_its_own_run_count(name):
    text, (p50, mean, p90, low), n = EXPECTED[name]
    stats = parse_perf_test(text)
    assert (stats["p50_us"], stats["mean_us"], stats["p90_us"], stats["min_us"]) == pytest.approx((p50, mean, p90, low))
    assert stats["n"] == n
    summary = perf_test_summary(stats)
    assert (summary["median_us"], summary["mean_us"], summary["p90_us"]) == pytest.approx((p50, mean, p90))
    assert summary["p10_us"] == pytest.approx(low)  # its minimum: the tool prints no P10
    assert summary["std_us"] == pytest.approx((p90 - p50) / 1.2816)
    assert summary["n"] == n  # what the tool timed, whatever was asked of it


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Segmentation fault",
        NEWER.replace("P50 Latency: 0.00141 s", ""),
        NEWER.replace("0.00141", "0"),
        NEWER.replace("Total inference requests: 100\n", ""),  # no count: n would be a guess
        OLDER.replace("Total iterations:1000\n", ""),
        NEWEST.replace("Runs:50", "Runs:49"),  # two counts that disagree
        NEWER.split("Min Latency")[0],  # run without -s: an average but no percentiles
    ],
    ids=["empty", "crash", "no-p50", "zero", "no-count-newer", "no-count-older", "counts-disagree", "without-s"],
)
def test_unparseable_zero_or_uncounted_output_fails_loudly(text):
    with pytest.raises(PerfTestParseError):
        parse_perf_test(text)


# Stands in for onnxruntime_perf_test on the emulated phone, behaving as the tool does where it matters here:
# the percentile block only with -s, and the count of timed runs it was asked for with -r.
FAKE_PERF_TEST = r"""#!/bin/sh
if [ "$1" = --help ]; then printf 'perf_test [options...] model_path\n\t-m [test_mode]: ...\n'; exit 255; fi
runs=1000; stats=0
while [ $# -gt 0 ]; do
  case "$1" in -r) runs=$2; shift ;; -s) stats=1 ;; esac
  shift
done
printf 'Total inference requests: %s\nAverage inference time cost total: 0.605420 ms\n' "$runs"
if [ "$stats" = 1 ]; then
  printf 'Runs:%s\nMin Latency: 0.000583 s\nP50 Latency: 0.000598 s\nP90 Latency: 0.000631 s\n' "$runs"
fi
"""


def test_the_perf_test_runner_asks_for_statistics_and_records_the_runs_it_timed(tmp_path):
    tools = tmp_path / "perf-test"
    tools.mkdir()
    (tools / "onnxruntime_perf_test").write_text(FAKE_PERF_TEST)
    (tools / "libonnxruntime.so").write_bytes(b"\x7fELF stand-in")
    (tmp_path / "op.onnx").write_bytes(b"model")
    with running_emulator(tmp_path / "sandbox") as emu:
        backend = AndroidBackend(AdbConnection(tcp=emu.address, key_path=tmp_path / "adbkey"), runner="perf-test",
                                 perf_test_dir=tools, fixed_performance=False, runtime_version="1.20.0")  # fmt: skip
        try:
            timing = backend.measure(tmp_path / "op.onnx", threads=1, warmup=10, runs=37)
        finally:
            backend.close()
    assert timing.samples_us is None and timing.summary is not None
    assert timing.summary["median_us"] == pytest.approx(598.0) and timing.summary["n"] == 37
    assert timing.context["runs"] == 37 and timing.context["warmup"] == 1  # the tool does one warm-up itself
