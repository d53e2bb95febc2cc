"""Step time and peak memory of the super net in `soft` (every candidate) against `hard` (one sampled
candidate per sample and layer) at the same batch. Each mode runs in its own process so peak RSS is its own.
Prints JSON with the ratios.

    python -m bench.search_step [--resolution 32] [--width 0.25] [--batch 64] [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def one_mode(mode: str, resolution: int, width: float, batch: int, steps: int, threads: int) -> dict:
    import torch

    from search.latency import LatencyLUT
    from search.space import get_space
    from search.supernet import SuperNet, fbnet_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    space = get_space(resolution=resolution, width=width, num_classes=10)
    shape = (len(space.slots), len(space.candidates))
    net = SuperNet(space, LatencyLUT(torch.rand(shape) * 100 + 10, 500.0))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, resolution, resolution), torch.randint(0, 10, (batch,))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        logits, lat = net(x, 5.0, mode)
        loss = fbnet_loss(torch.nn.functional.cross_entropy(logits, y, reduction="none"), lat, 0.2, 0.6)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step allocates; not timed
            times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step_s": statistics.median(times), "peak_rss_mb": peak_mb, "rss_growth_mb": peak_mb - base_rss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(one_mode(args.mode, args.resolution, args.width, args.batch, args.steps, args.threads)))
        return
    results = {}
    for mode in ("soft", "hard"):
        out = subprocess.run([sys.executable, "-m", "bench.search_step", *sys.argv[1:], "--mode", mode],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        results[mode] = json.loads(out.strip().splitlines()[-1])
    soft, hard = results["soft"], results["hard"]
    print(json.dumps({
        "bench": "search_step",
        "space": {"resolution": args.resolution, "width": args.width, "layers": 22, "candidates": 9},
        "batch": args.batch, "threads": args.threads,
        "soft": soft, "hard": hard,
        "step_time_ratio_soft_over_hard": round(soft["step_s"] / hard["step_s"], 2),
        "peak_rss_ratio_soft_over_hard": round(soft["peak_rss_mb"] / hard["peak_rss_mb"], 2),
        "rss_growth_ratio_soft_over_hard": round(soft["rss_growth_mb"] / max(hard["rss_growth_mb"], 1e-9), 2),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
