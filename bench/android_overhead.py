"""Per-operator cost of the android path (push + run + parse + clean up, over the ADB wire to the emulator)
against the local path (child-process onnxruntime), measuring the same ops with the same config. Both end up
running onnxruntime on this host, so the difference is the android path's overhead. Prints JSON.

    python -m bench.android_overhead [--ops 20] [--runs 20]
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
from device_agents.local.backend import LocalBackend
from search.enumerate import enumerate_ops
from search.export import ExportCache
from search.space import get_space
from tests.emulator_harness import running_emulator


def _time(backend, models: list[Path], runs: int) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    backend.measure(models[0], threads=1, warmup=2, runs=runs)  # set-up (runner push, child start) not counted
    walls, measured = [], []
    for model in models:
        start = time.perf_counter()
        timing = backend.measure(model, threads=1, warmup=2, runs=runs)
        walls.append(time.perf_counter() - start)
        samples = timing.samples_us or []
        measured.append(sum(samples) / 1e6)
    return walls, measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=20)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = ExportCache(work / "onnx")
        specs = list(enumerate_ops(get_space(resolution=96, width=0.35)).ops.values())[: args.ops]
        models = [cache.get(s) for s in specs]
        local = LocalBackend()
        local_wall, local_run = _time(local, models, args.runs)
        local.close()
        with running_emulator(work / "sandbox") as emu:
            android = AndroidBackend(AdbConnection(tcp=emu.address, key_path=work / "adbkey"), fixed_performance=False)
            android_wall, android_run = _time(android, models, args.runs)
            android.close()
    med = statistics.median
    print(json.dumps({
        "bench": "android_overhead",
        "ops": len(models),
        "runs_per_op": args.runs,
        "local_ms_per_op": round(med(local_wall) * 1e3, 1),
        "android_ms_per_op": round(med(android_wall) * 1e3, 1),
        "android_overhead_ms_per_op": round((med(android_wall) - med(local_wall)) * 1e3, 1),
        "timed_runs_ms_per_op": {"local": round(med(local_run) * 1e3, 2), "android": round(med(android_run) * 1e3, 2)},
        "note": "android = ADB push + python3 runner start + parse + rm, emulator on loopback",
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
