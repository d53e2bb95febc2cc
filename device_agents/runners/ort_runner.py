"""Time ONNX models with onnxruntime; prints JSON lines.

Standalone on purpose (numpy + onnxruntime, and `rounds.py` beside it): the local agent runs it as a child
process, the Android agent pushes both files to devices that have Python.

    python ort_runner.py MODEL --threads 1 --warmup 10 --runs 50       # one model, one block of runs
    python ort_runner.py --batch REQUEST.json                          # many models in interleaved rounds
    python ort_runner.py --serve        # JSON requests on stdin, one per line; JSON lines on stdout

A batch request is `{"batch": [{"id": "17", "model": "a.onnx"}, ...], "threads": 1, "warmup": 10,
"rounds": 20, "runs_per_round": 3, "seed": 0}`. Every session is opened and warmed first; then each round
visits every model in a fresh random order (one untimed run, then `runs_per_round` timed runs). Output, one
line each: `{"ready": id}` or `{"id": id, "error": "..."}` per model as it loads, `{"round": r}` after each
round, `{"id": id, "round_samples_us": [[...], ...]}` per model, then `{"done": true, "context": {...}}`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

try:
    from search.measurement import rounds
except ImportError:  # pushed to a device: rounds.py lies beside this file
    import rounds  # type: ignore[no-redef]


def _session(model: str, threads: int) -> Callable[[], object]:
    """An open session and a call that runs it once on a fixed random input of the model's own shape."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # What onnxruntime_perf_test's -Z does: intra-op threads stop spinning between runs, so every runner of
    # this project measures the same way (it matters only with threads > 1).
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    feed = {inp.name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    return lambda: sess.run(None, feed)


def _context(threads: int, **extra: Any) -> dict[str, Any]:
    import onnxruntime as ort

    return {
        "runtime": "onnxruntime",
        "runtime_version": ort.__version__,
        "threads": threads,
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "spinning": "stopped between runs",
        **extra,
    }


def measure(model: str, threads: int = 1, warmup: int = 10, runs: int = 50) -> dict:
    """One model alone, one block of runs: the protocol's single-job form."""
    run = _session(model, threads)
    for _ in range(warmup):
        run()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(runs):
        start = clock()
        run()
        samples.append((clock() - start) / 1e3)
    return {"samples_us": samples, "context": _context(threads, warmup=warmup, runs=runs, method="block")}


def measure_batch(request: dict, emit: Callable[[dict], None]) -> None:
    """Every model of the batch open at once, measured in interleaved rounds (see rounds.py)."""
    threads = int(request.get("threads", 1))
    warmup = int(request.get("warmup", 10))
    n_rounds = int(request.get("rounds", 20))
    per_round = int(request.get("runs_per_round", 3))
    seed = int(request.get("seed", 0))
    ids, calls = [], []
    for item in request["batch"]:
        try:
            run = _session(item["model"], threads)
            for _ in range(warmup):
                run()
        except Exception as exc:  # this model fails; the rest of the batch is measured
            emit({"id": item["id"], "error": f"{type(exc).__name__}: {exc}"})
            continue
        ids.append(item["id"])
        calls.append(run)
        emit({"ready": item["id"]})
    samples: list[list[list[float]]] = [[] for _ in ids]
    failed: set[int] = set()
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed run would land on whichever model happened to be running
    try:
        for r, order in enumerate(rounds.visit_orders(len(ids), n_rounds, seed)):
            for i in order:
                if i in failed:
                    continue
                run = calls[i]
                try:
                    run()  # untimed: the previous visit was another model
                    times = []
                    for _ in range(per_round):
                        start = clock()
                        run()
                        times.append((clock() - start) / 1e3)
                except Exception as exc:  # this model stops here; the others keep their rounds
                    failed.add(i)
                    emit({"id": ids[i], "error": f"round {r + 1}: {type(exc).__name__}: {exc}"})
                    continue
                samples[i].append(times)
            emit({"round": r + 1})
    finally:
        if gc_was_enabled:
            gc.enable()
    for i, (model_id, per_model) in enumerate(zip(ids, samples, strict=True)):
        if i not in failed:
            emit({"id": model_id, "round_samples_us": per_model})
    context = _context(threads, warmup=warmup, rounds=n_rounds, runs_per_round=per_round, seed=seed,
                       method="interleaved", estimator=rounds.ESTIMATOR, batch_models=len(ids),
                       runner_peak_rss_mb=_peak_rss_mb())  # fmt: skip
    emit({"done": True, "context": context})


def _peak_rss_mb() -> float | None:
    """Every model of a batch is held open at once: what that costs in memory matters on a phone."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve() -> None:
    """One long-lived process for many requests: no interpreter start-up per op or per batch."""
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            if "batch" in req:
                measure_batch(req, _emit)
                continue
            out = measure(req["model"], req.get("threads", 1), req.get("warmup", 10), req.get("runs", 50))
        except Exception as exc:  # reported to the agent, which fails the job(s) with this reason
            out = {"error": f"{type(exc).__name__}: {exc}", "done": True}
        _emit(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--batch", metavar="REQUEST.json", help="measure a batch request in interleaved rounds")
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve()
    elif args.batch:
        with open(args.batch) as fh:
            measure_batch(json.load(fh), _emit)
    elif args.model:
        _emit(measure(args.model, args.threads, args.warmup, args.runs))
    else:
        parser.error("MODEL, --batch or --serve is required")


if __name__ == "__main__":
    main()
