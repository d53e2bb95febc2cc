"""Time one ONNX model with onnxruntime: warm-up, then N timed runs; prints JSON.

Standalone on purpose (numpy + onnxruntime only): the local agent runs it as a child process, the Android
agent pushes it to devices that have Python.

    python ort_runner.py MODEL --threads 1 --warmup 10 --runs 50
    python ort_runner.py --serve     # JSON lines on stdin -> JSON lines on stdout, one model per line
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def measure(model: str, threads: int = 1, warmup: int = 10, runs: int = 50) -> dict:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    feed = {inp.name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    for _ in range(warmup):
        sess.run(None, feed)
    samples = []
    clock = time.perf_counter_ns
    for _ in range(runs):
        start = clock()
        sess.run(None, feed)
        samples.append((clock() - start) / 1e3)
    return {
        "samples_us": samples,
        "context": {
            "runtime": "onnxruntime",
            "runtime_version": ort.__version__,
            "threads": threads,
            "warmup": warmup,
            "runs": runs,
            "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "python": platform.python_version(),
        },
    }


def serve() -> None:
    """One long-lived process for many models: no interpreter start-up per op."""
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            out = measure(req["model"], req.get("threads", 1), req.get("warmup", 10), req.get("runs", 50))
        except Exception as exc:  # reported to the agent, which fails the job with this reason
            out = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if not args.model:
        parser.error("MODEL is required unless --serve")
    print(json.dumps(measure(args.model, args.threads, args.warmup, args.runs)))


if __name__ == "__main__":
    main()
