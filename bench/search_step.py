"""Step time and peak memory of the super net: `soft` (every candidate), `hard` (one sampled candidate per
sample and layer, samples grouped by candidate) and `hard` under bf16 autocast, at the same batch. Also the
theta step (no weight gradients) in hard mode, and soft and hard in PyTorch's default NCHW layout (`*_nchw`)
against the channels-last layout training uses on a CPU (search/dnas/layout.py). Each variant runs in its own
process so its peak RSS is its own; the variants run in interleaved rounds (`--rounds`), so each ratio comes
with its per-round values: their spread is the noise. Prints JSON with the ratios.

    python -m bench.search_step [--resolution 32] [--width 0.25] [--batch 64] [--steps 5] [--threads 1] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = {
    "soft": {"mode": "soft", "bf16": False, "theta": False, "nchw": False},
    "soft_nchw": {"mode": "soft", "bf16": False, "theta": False, "nchw": True},
    "hard": {"mode": "hard", "bf16": False, "theta": False, "nchw": False},
    "hard_nchw": {"mode": "hard", "bf16": False, "theta": False, "nchw": True},
    "hard_bf16": {"mode": "hard", "bf16": True, "theta": False, "nchw": False},
    "hard_theta_step": {"mode": "hard", "bf16": False, "theta": True, "nchw": False},
}


def one_variant(name: str, resolution: int, width: float, batch: int, steps: int, threads: int) -> dict:
    import torch

    from search.dnas.layout import batch_for_training, model_for_training
    from search.dnas.supernet import SuperNet, fbnet_loss
    from search.space.macro import get_space
    from search.tables.latency import LatencyLUT

    v = VARIANTS[name]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    space = get_space(resolution=resolution, width=width, num_classes=10)
    shape = (len(space.slots), len(space.candidates))
    net = SuperNet(space, LatencyLUT(torch.rand(shape) * 100 + 10, 500.0))
    weights = net.weight_parameters()
    opt = torch.optim.SGD(weights, lr=0.01, momentum=0.9) if not v["theta"] else torch.optim.Adam([net.theta])
    net.theta.requires_grad_(v["theta"])  # as the trainer does: each phase computes only its own gradients
    x, y = torch.randn(batch, 3, resolution, resolution), torch.randint(0, 10, (batch,))
    if not v["nchw"]:  # what the trainer does on a CPU
        cpu = torch.device("cpu")
        model_for_training(net, cpu)
        x = batch_for_training(x, cpu)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if v["bf16"] else contextlib.nullcontext()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with cast:
            logits, lat = net(x, 5.0, v["mode"])
        loss = fbnet_loss(torch.nn.functional.cross_entropy(logits, y, reduction="none"), lat, 0.2, 0.6)
        opt.zero_grad()
        if v["theta"]:
            loss.backward(inputs=[net.theta])
        else:
            loss.backward()
        opt.step()
        if i:  # the first step allocates; not timed
            times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step_s": round(statistics.median(times), 4), "step_s_all": [round(t, 4) for t in times],
            "peak_rss_mb": round(peak_mb, 1), "rss_growth_mb": round(peak_mb - base_rss / 1024, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every variant")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        out = one_variant(args.variant, args.resolution, args.width, args.batch, args.steps, args.threads)
        print(json.dumps(out))
        return
    rounds: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name in VARIANTS:
            out = subprocess.run([sys.executable, "-m", "bench.search_step", *sys.argv[1:], "--variant", name],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            rounds[name].append(json.loads(out.strip().splitlines()[-1]))
    results = {name: {**runs[0], "step_s": round(statistics.median(r["step_s"] for r in runs), 4),
                      "step_s_rounds": [r["step_s"] for r in runs]}
               for name, runs in rounds.items()}  # fmt: skip
    soft, hard, bf16 = results["soft"], results["hard"], results["hard_bf16"]

    def per_round(slow: str, fast: str) -> list[float]:
        return [round(a["step_s"] / b["step_s"], 2) for a, b in zip(rounds[slow], rounds[fast], strict=True)]

    print(json.dumps({
        "bench": "search_step",
        "space": {"resolution": args.resolution, "width": args.width, "layers": 22, "candidates": 9},
        "batch": args.batch, "threads": args.threads, "rounds": args.rounds,
        **results,
        "step_time_ratio_soft_over_hard": round(soft["step_s"] / hard["step_s"], 2),
        "step_time_ratio_hard_over_hard_bf16": round(hard["step_s"] / bf16["step_s"], 2),
        "step_time_ratio_hard_w_over_hard_theta": round(hard["step_s"] / results["hard_theta_step"]["step_s"], 2),
        "step_time_ratio_soft_nchw_over_soft": round(results["soft_nchw"]["step_s"] / soft["step_s"], 2),
        "step_time_ratio_soft_nchw_over_soft_rounds": per_round("soft_nchw", "soft"),
        "step_time_ratio_hard_nchw_over_hard": round(results["hard_nchw"]["step_s"] / hard["step_s"], 2),
        "step_time_ratio_hard_nchw_over_hard_rounds": per_round("hard_nchw", "hard"),
        "peak_rss_ratio_soft_over_hard": round(soft["peak_rss_mb"] / hard["peak_rss_mb"], 2),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
