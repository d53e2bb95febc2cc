"""How many rounds, how many runs per visit: the numbers behind the measurement defaults (20 x 3).

Measures every op of a space and N sampled networks in one long interleaved batch (40 rounds of 6 timed
runs, the same runner the agents use), then asks, for each smaller (rounds R, runs per visit k): how well
do two *independent* measurements with that setting agree? Even rounds against odd rounds give two disjoint
halves of R rounds each; the first k runs of each visit stand for a visit of k runs. It reports, per
(R, k), the disagreement of the halves on op estimates and on network predictions (the sum of a network's
ops), and the cost in timed+untimed runs per model. Prints JSON.

    python -m bench.rounds [--resolution 224] [--width 1.0] [--networks 20] [--cpus 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from device_agents.runners import ort_runner
from search.space.enumerate import enumerate_ops
from search.space.export import ExportCache, atomic_write, export_network
from search.space.macro import get_space
from search.space.model import build_model

MAX_ROUNDS, MAX_RUNS = 40, 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--networks", type=int, default=20)
    parser.add_argument("--cpus", default=None, help="pin this process, e.g. '0'")
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, [int(c) for c in args.cpus.split(",")])
    space = get_space(resolution=args.resolution, width=args.width, num_classes=args.classes)
    en = enumerate_ops(space)
    rng = random.Random(0)
    archs = [[rng.choice(space.candidates) for _ in space.slots] for _ in range(args.networks)]
    with tempfile.TemporaryDirectory() as tmp:
        cache = ExportCache(Path(tmp) / "ops")
        batch = [{"id": key, "model": str(cache.get(spec))} for key, spec in en.ops.items()]
        shape = (1, space.in_channels, space.resolution, space.resolution)
        for i, arch in enumerate(archs):
            torch.manual_seed(0)
            path = Path(tmp) / f"net{i}.onnx"
            atomic_write(path, export_network(build_model(space, arch), shape))
            batch.append({"id": f"net{i}", "model": str(path)})
        lines: list[dict] = []
        request = {"batch": batch, "threads": 1, "warmup": 10, "rounds": MAX_ROUNDS, "runs_per_round": MAX_RUNS}
        ort_runner.measure_batch(request, lines.append)
    samples = {m["id"]: np.array(m["round_samples_us"]) for m in lines if "round_samples_us" in m}  # [R, k]
    op_keys = list(en.ops)
    uses = np.array([[sum(s.key == k for s in space.network_ops(a)) for k in op_keys] for a in archs])

    def halves(x: np.ndarray, r: int, k: int) -> tuple[float, float]:
        even, odd = x[0 : 2 * r : 2, :k], x[1 : 2 * r : 2, :k]
        return statistics.median(np.median(even, 1)), statistics.median(np.median(odd, 1))

    table = []
    for r in (5, 10, 20):
        for k in (1, 2, 3, 5):
            ops = np.array([halves(samples[key], r, k) for key in op_keys])
            nets = np.array([halves(samples[f"net{i}"], r, k) for i in range(len(archs))])
            pred_a, pred_b = uses @ ops[:, 0], uses @ ops[:, 1]
            table.append({
                "rounds": r, "runs_per_round": k, "runs_per_model": r * (k + 1),
                "op_halves_mape_pct": round(float(np.mean(np.abs(ops[:, 0] / ops[:, 1] - 1)) * 100), 2),
                "network_sum_halves_mape_pct": round(float(np.mean(np.abs(pred_a / pred_b - 1)) * 100), 2),
                "network_halves_mape_pct": round(float(np.mean(np.abs(nets[:, 0] / nets[:, 1] - 1)) * 100), 2),
            })  # fmt: skip
    print(json.dumps({
        "bench": "rounds",
        "space": {"resolution": args.resolution, "width": args.width, "ops": len(op_keys), "networks": len(archs)},
        "measured": {"rounds": MAX_ROUNDS, "runs_per_round": MAX_RUNS},
        "what": "disagreement between two disjoint halves (even vs odd rounds), each of R rounds of k runs",
        "table": table,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
