"""What the android path costs per operator on top of measuring it, against the local path, measuring the
same ops with the same plan. Both end up running onnxruntime on this host (the android one through the ADB
device emulator on loopback), so the difference is the android path's overhead: pushing, the runner's start,
streaming results back. Prints JSON.

- batch (protocol 2): one on-device process per batch, models pushed once; a repeat batch finds the models
  already on the device (same SHA-256) and pushes nothing.
- single (protocol 1, the old path): one process per op; measured on a few ops only, for comparison.

    python -m bench.android_overhead [--ops 20] [--rounds 5] [--runs-per-round 4] [--single-ops 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from device_agents.android.backend import AndroidBackend
from device_agents.android.connection import AdbConnection
from device_agents.backend import BatchPlan, Timing
from device_agents.local.backend import LocalBackend
from search.space.enumerate import enumerate_ops
from search.space.export import ExportCache
from search.space.macro import get_space
from tests.emulator_harness import running_emulator


def _batch(backend, models: dict[str, Path], plan: BatchPlan) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(wall seconds, seconds spent in timed and untimed runs as the runner measured them)."""
    start = time.perf_counter()
    out = backend.measure_batch(models, plan)
    wall = time.perf_counter() - start
    assert all(isinstance(t, Timing) for t in out.values()), out
    timed = sum(sum(map(sum, t.round_samples_us or [])) for t in out.values() if isinstance(t, Timing)) / 1e6
    return wall, timed


def _single(backend, models: list[Path], runs: int) -> float:  # type: ignore[no-untyped-def]
    backend.measure(models[0], threads=1, warmup=2, runs=runs)  # set-up not counted
    walls = []
    for model in models:
        start = time.perf_counter()
        backend.measure(model, threads=1, warmup=2, runs=runs)
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs-per-round", type=int, default=4)
    parser.add_argument("--single-ops", type=int, default=5)
    args = parser.parse_args()
    plan = BatchPlan(threads=1, warmup=2, rounds=args.rounds, runs_per_round=args.runs_per_round, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = ExportCache(work / "onnx")
        specs = list(enumerate_ops(get_space(resolution=96, width=0.35)).ops.values())[: args.ops]
        models = {str(i): cache.get(s) for i, s in enumerate(specs)}
        local = LocalBackend()
        _batch(local, dict(list(models.items())[:1]), plan)  # child start not counted
        local_wall, local_timed = _batch(local, models, plan)
        local.close()
        with running_emulator(work / "sandbox") as emu:
            conn = AdbConnection(tcp=emu.address, key_path=work / "adbkey")
            android = AndroidBackend(conn, fixed_performance=False, taskset="none")
            android.fingerprint()  # the runner check and push: once per agent start, not counted
            first_wall, _ = _batch(android, models, plan)
            repeat_wall, repeat_timed = _batch(android, models, plan)
            single = _single(android, list(models.values())[: args.single_ops], args.rounds * args.runs_per_round)
            android.close()
    n = len(models)

    def per_op(seconds: float) -> float:
        return round(seconds / n * 1e3, 2)

    print(json.dumps({
        "bench": "android_overhead",
        "ops": n,
        "plan": {"warmup": plan.warmup, "rounds": plan.rounds, "runs_per_round": plan.runs_per_round},
        "local_batch_ms_per_op": per_op(local_wall),
        "android_batch_ms_per_op": per_op(repeat_wall),
        "android_first_batch_ms_per_op": per_op(first_wall),
        "android_batch_overhead_ms_per_op": per_op(repeat_wall - local_wall),
        "android_batch_overhead_s_per_batch": round(repeat_wall - local_wall, 2),
        "timed_runs_ms_per_op": {"local": per_op(local_timed), "android": per_op(repeat_timed)},
        "android_single_job_ms_per_op": round(single * 1e3, 1),
        "note": "batch = one python3 process per batch on the (emulated) device, results streamed back; first batch "
        "pushes the models, the repeat finds them by SHA-256; single = the protocol-1 path, one process per op",
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
