"""`dnas quickstart`'s printing: the job itself is search/pipeline/quickstart.py's `run_quickstart`."""

from __future__ import annotations

from search.pipeline.quickstart import QuickstartResult


def echo(line: str) -> None:
    """The run's progress lines, as they come (flushed: the steps take minutes)."""
    print(line, flush=True)


def print_summary(result: QuickstartResult) -> None:
    print("\n" + "=" * 86)
    print(f"{'':10s} {'accuracy':>9s} {'predicted':>10s} {'measured':>9s} {'error':>7s} {'drift-adj.':>10s} "
          f"{'params':>8s} {'MACs':>8s}")  # fmt: skip
    for r in result.networks:
        print(f"{r.name:10s} {r.val_accuracy * 100:8.2f}% {r.predicted_latency_ms:8.3f}ms "
              f"{r.measured_latency_ms:7.3f}ms {r.prediction_error_pct:+6.1f}% "
              f"{r.prediction_error_drift_adjusted_pct:+9.1f}% {r.params / 1e3:7.1f}K "
              f"{r.flops / 1e6:7.2f}M")  # fmt: skip
    drift = result.drift_since_profiling
    print(f"the machine ran {drift - 1:+.1%} vs when the table was profiled (its anchor networks, measured again;"
          " drift-adj.: the error with that divided out)"
          + ("; a neighbour or heat: predictions are only as good as the device stays" if abs(drift - 1) > 0.05
             else ""))  # fmt: skip
    if result.precision != "fp32":
        print(f"latencies above are {result.precision}: the table, the search and both measured files")
        for r in result.networks:
            if r.int8:
                print(f"{r.name:10s} int8 accuracy {r.int8['int8_val_accuracy'] * 100:.2f}% against fp32 "
                      f"{r.int8['fp32_onnx_val_accuracy'] * 100:.2f}% (both onnxruntime, held-out split)")  # fmt: skip
    print(f"theta learnt: mean per-layer largest probability {result.search['theta_max_prob_mean']:.2f}")
    print(f"searched is {result.speedup_measured:.2f}x faster measured, "
          f"{result.accuracy_delta_points:+.2f} accuracy points vs the baseline "
          f"({result.wall_s / 60:.1f} min)")  # fmt: skip
    theta, accuracy = result.pictures
    print(f"report: {result.report_path}; pictures: {theta}, {accuracy}")
