"""The README's main job, with fewer search epochs: every stage runs for real, the report and pictures are written."""

import json
import subprocess
import sys

import pytest

# Measures the searched and baseline networks on this host and checks the speed-up and the prediction
# error: run alone, after the parallel part of `make test`.
pytestmark = pytest.mark.serial


@pytest.mark.timeout(1260)  # the whole job; its own subprocess timeout (1200 s) fires first, with the output
def test_quickstart_end_to_end(tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run(
        [sys.executable, "-m", "dnas", "quickstart", "--out", str(out), "--search-epochs", "2", "--train-epochs", "8"],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in range(1, 9):
        assert f"[{step}/8]" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    searched, baseline = report["networks"]
    assert (searched["name"], baseline["name"]) == ("searched", "baseline")
    assert baseline["arch"] == ["ir_k3_e6"] * 22
    # The search had a budget of half the baseline's predicted latency, and met it by prediction...
    assert searched["predicted_latency_ms"] <= report["search"]["target_latency_ms"]
    assert report["search"]["target_latency_ms"] == pytest.approx(0.5 * baseline["predicted_latency_ms"])
    # ...by a margin the table's error cannot erase: the searched network is faster on the device too.
    assert searched["measured_latency_ms"] < baseline["measured_latency_ms"]
    assert report["speedup_measured"] > 1.2
    # Theta moved away from uniform (1/9 per layer), even in this two-epoch run.
    assert report["search"]["theta_max_prob_mean"] > 1.5 / 9
    # Predictions carry their measured error, and the anchors' drift since profiling is reported. The README's
    # runs: within 4% on a quiet machine; +25% raw and +8.3% with the drift divided out beside a neighbour's
    # load. Bounded at twice the loaded figures: a table or rule gone wrong lands far outside.
    assert all(abs(r["prediction_error_pct"]) < 50 for r in report["networks"]), report["networks"]
    assert all(abs(r["prediction_error_drift_adjusted_pct"]) < 20 for r in report["networks"]), report["networks"]
    assert 0.5 < report["drift_since_profiling"] < 2
    assert searched["flops"] < baseline["flops"]
    # Both networks learnt the digits (10 classes: a guess scores 0.1) in the quickstart's own 8 retraining epochs.
    # Not in 3: a searched network scored 0.206 in one clean-clone run and 0.919 in the next (another table,
    # another architecture), and the baseline 0.543 to 0.905 with the same seed on other thread counts.
    assert searched["val_accuracy"] > 0.5 and baseline["val_accuracy"] > 0.5, report["networks"]
    assert report["table"]["device"]["name"] == "this-host"
    for picture in ("theta.png", "accuracy_vs_latency.png"):
        assert (out / picture).read_bytes().startswith(b"\x89PNG")
    assert (out / "search" / "target.onnx").exists()
    assert "faster measured" in proc.stdout and "mean per-layer largest probability" in proc.stdout
