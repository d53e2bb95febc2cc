"""The measurement rule every runner shares (search/measurement/rounds.py), and the onnxruntime runner and
local backend that implement it on real models."""

import statistics

import numpy as np
import pytest

from device_agents.backend import BatchPlan, MeasurementError, Timing
from device_agents.local.backend import LocalBackend
from search.measurement import rounds
from search.space.export import ExportCache
from search.space.opspec import OpSpec

# The local backend's timings are compared with each other: run alone, after the parallel part of `make test`.
pytestmark = pytest.mark.serial


def test_every_round_visits_every_model_once_in_a_fresh_order():
    orders = list(rounds.visit_orders(6, 20, seed=3))
    assert len(orders) == 20 and all(sorted(o) == list(range(6)) for o in orders)
    assert len({tuple(o) for o in orders}) > 10  # fresh orders, not one shuffled once
    assert orders == list(rounds.visit_orders(6, 20, seed=3))  # reproducible from the batch's seed
    assert orders != list(rounds.visit_orders(6, 20, seed=4))


def test_estimate_is_the_median_of_round_medians_and_shrugs_off_a_disturbed_round():
    quiet = [[100.0, 101.0, 99.0]] * 9
    disturbed = [*quiet, [400.0, 380.0, 390.0]]  # one round where a neighbour took the core
    stats = rounds.summarise_rounds(disturbed)
    assert stats["median_us"] == 100.0 and stats["rounds"] == 10 and stats["n"] == 30
    assert stats["round_medians_us"] == [100.0] * 9 + [390.0]
    assert stats["p10_us"] <= stats["median_us"] <= stats["p90_us"]
    assert stats["p90_us"] == pytest.approx(np.percentile(stats["round_medians_us"], 90))
    assert stats["mean_us"] == pytest.approx(statistics.fmean(stats["round_medians_us"]))
    with pytest.raises(ValueError):
        rounds.summarise_rounds([[100.0], []])
    with pytest.raises(ValueError):
        rounds.summarise_rounds([[float("nan")]])


def test_local_backend_measures_a_batch_in_rounds_and_fails_a_broken_model_alone(tmp_path):
    cache = ExportCache(tmp_path / "onnx")
    small, large = OpSpec("probe", 8, 8, 8, 8), OpSpec("ir", 16, 16, 32, 32, kernel=5, expansion=6)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    models = {"small": cache.get(small), "broken": broken, "large": cache.get(large)}
    backend = LocalBackend()
    try:
        out = backend.measure_batch(models, BatchPlan(threads=1, warmup=2, rounds=6, runs_per_round=2, seed=1))
    finally:
        backend.close()
    assert isinstance(out["broken"], MeasurementError)
    for key in ("small", "large"):
        timing = out[key]
        assert isinstance(timing, Timing) and len(timing.round_samples_us) == 6
        assert all(len(r) == 2 and all(s > 0 for s in r) for r in timing.round_samples_us)
        assert timing.context["method"] == "interleaved" and timing.context["batch_models"] == 2
        assert timing.context["rounds"] == 6 and timing.context["seed"] == 1
    # Each model's timings are its own, not its neighbour's: the block with 96 expanded channels at 32x32 is the
    # slower of the two on any machine (by how much is a benchmark's question, bench/, not a test's).
    med = {k: rounds.summarise_rounds(out[k].round_samples_us)["median_us"] for k in ("small", "large")}
    assert med["large"] > med["small"]
