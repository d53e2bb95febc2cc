"""One per-device search for N devices against N separate searches: wall time, and where it goes.

A per-device search shares the super net's weights: one weight phase per epoch, then a theta phase per
device. N separate searches pay the weight phase N times. This bench measures both for N = 1, 2, 3 (each
"device" a table of this host's CPU measured with a different onnxruntime thread count: real tables, the
same space), with the same settings, one after another in one process (after one untimed warm-up search;
with --repeats, the two alternate which goes first), and prints JSON: wall and CPU seconds (median over
repeats), CPU seconds in the weight and theta phases, and the ratios separate / per-device. On a shared
machine the CPU seconds of this process (one torch thread, no loader workers) are the steadier measure: wall
time also counts the neighbours' work.

    python -m bench.multi_device [--devices 1 2 3] [--epochs 3] [--steps 10] [--mode hard] [--threads 1]
                                 [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def measure_table(space: Any, threads: int, work: Path, runs: int) -> Any:
    """The space's ops measured on this host with `threads` onnxruntime threads, as a table file would be."""
    from device_agents.runners.ort_runner import measure
    from device_agents.stats import summarise
    from search.space.enumerate import enumerate_ops
    from search.space.export import ExportCache
    from search.tables.schema import PublishedTable

    cache = ExportCache(work / "onnx")
    entries = []
    for key, spec in enumerate_ops(space).ops.items():
        stats = summarise(measure(str(cache.get(spec)), threads=threads, warmup=3, runs=runs)["samples_us"])
        entries.append({"key": key, "spec": spec.to_dict(), **stats, "context": {}})
    return PublishedTable.parse({
        "device": {"id": threads, "name": f"host-{threads}-thread"},
        "version": 1,
        "space": space.to_dict(),
        "space_hash": space.hash,
        "content_sha256": f"bench-{threads}t-{space.hash[:12]}",
        "config": {"threads": threads, "runs": runs},
        "entries": entries,
    })  # fmt: skip


class PhaseClock:
    """CPU seconds spent in each phase of every search run while installed (wraps Searcher._run_phase)."""

    def __init__(self) -> None:
        from search.dnas.trainer import Searcher

        self.seconds = {"w": 0.0, "theta": 0.0}
        original = Searcher._run_phase
        clock = self

        def timed(searcher: Any, phase: str, tau: float) -> Any:
            start = time.process_time()
            try:
                return original(searcher, phase, tau)
            finally:
                clock.seconds[phase] += time.process_time() - start

        Searcher._run_phase = timed  # type: ignore[method-assign]

    def take(self) -> dict[str, float]:
        out = {k: round(v, 2) for k, v in self.seconds.items()}
        self.seconds = {"w": 0.0, "theta": 0.0}
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="steps per phase and epoch")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--mode", choices=("soft", "hard"), default="hard")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the search")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per op when measuring the tables")
    parser.add_argument("--repeats", type=int, default=1, help="alternating which of the two runs first")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from search.dnas.config import SearchConfig
    from search.dnas.run import run_search
    from search.space.macro import get_space

    space = get_space(resolution=32, width=0.25, num_classes=10)
    cfg = SearchConfig(epochs=args.epochs, warmup_epochs=1, batch_size=args.batch, mode=args.mode,
                       steps_per_epoch=args.steps, threads=args.threads, samples=1, workers=0, validate=False,
                       tensorboard=False, lr_w=0.05, lr_theta=0.05)  # fmt: skip
    clock = PhaseClock()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        tables = [measure_table(space, threads, work, args.runs) for threads in range(1, max(args.devices) + 1)]
        measure_s = time.perf_counter() - t0
        run_search(tables[0], "digits", cfg, work / "warm-up")  # imports, data, first allocations: untimed
        clock.take()

        def per_device(n: int, tag: str) -> tuple[float, float, dict[str, float]]:
            wall, cpu = time.perf_counter(), time.process_time()
            run_search(tables[:n], "digits", cfg, work / f"per-device-{n}-{tag}")
            return time.perf_counter() - wall, time.process_time() - cpu, clock.take()

        def separate(n: int, tag: str) -> tuple[float, float, dict[str, float]]:
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(n):
                run_search(tables[i], "digits", cfg, work / f"separate-{n}-{i}-{tag}")
            return time.perf_counter() - wall, time.process_time() - cpu, clock.take()

        for n in args.devices:
            joint, apart = [], []
            for r in range(args.repeats):
                if r % 2 == 0:
                    joint.append(per_device(n, str(r)))
                    apart.append(separate(n, str(r)))
                else:
                    apart.append(separate(n, str(r)))
                    joint.append(per_device(n, str(r)))

            def med(runs: list, i: int) -> float:
                return statistics.median(r[i] for r in runs)

            rows.append({
                "devices": n,
                "per_device_search": {"wall_s": round(med(joint, 0), 1), "cpu_s": round(med(joint, 1), 1),
                                      "phases_cpu_s": joint[0][2]},
                "separate_searches": {"wall_s": round(med(apart, 0), 1), "cpu_s": round(med(apart, 1), 1),
                                      "phases_cpu_s": apart[0][2]},
                "separate_over_per_device": {"wall": round(med(apart, 0) / med(joint, 0), 2),
                                             "cpu": round(med(apart, 1) / med(joint, 1), 2)},
                "all_runs": {"per_device_wall_s": [round(r[0], 1) for r in joint],
                             "separate_wall_s": [round(r[0], 1) for r in apart],
                             "per_device_cpu_s": [round(r[1], 1) for r in joint],
                             "separate_cpu_s": [round(r[1], 1) for r in apart]},
            })  # fmt: skip
    print(json.dumps({
        "bench": "multi_device",
        "space": {"resolution": 32, "width": 0.25, "classes": 10, "hash": space.hash[:12]},
        "tables": [t.device_info["name"] for t in tables],
        "search": {"epochs": args.epochs, "warmup_epochs": 1, "steps_per_phase": args.steps, "batch": args.batch,
                   "mode": args.mode, "torch_threads": args.threads, "data": "digits", "repeats": args.repeats},
        "measure_tables_s": round(measure_s, 1),
        "results": rows,
        "note": "median over repeats (phases: the first repeat) on a shared 2-core machine, where CPU seconds are "
                "the steadier figure; the weight phase runs once per epoch in a per-device search and once per "
                "search when searching separately; the theta phases are the same work; N = 1 is the control "
                "(the same work both ways)",
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
