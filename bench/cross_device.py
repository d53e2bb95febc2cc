"""Two devices, one search, measured through their agents: the cross-device cost matrix on this host.

An embedded service (SQLite) with two devices registered as separate targets whose profiling runs use
different measurement settings (onnxruntime with 1 thread and with 2 threads), each served by its own local
agent process. Each device is profiled in turn; both tables are fetched over REST one after another; then
1. a per-device search (shared weights, a theta per device, a budget per device at `--fraction` of that
   device's baseline) returns an architecture per device, and both are measured end to end on both devices
   (one network set per device, with the table's anchors, measured in interleaved rounds);
2. an all-devices search with a budget per device (`--fraction-all`) returns one architecture, measured on
   both devices against its budgets.
Prints JSON (predicted and measured matrices, whether each device's architecture is the fastest there, the
budgets) and writes the PNGs into --out.

    python -m bench.cross_device [--out runs/cross] [--epochs 8] [--mode hard] [--fraction 0.75]
                                 [--fraction-all 0.7] [--agent-cpus 1] [--agent-nice 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BASELINE = "ir_k3_e6"
SPACE = {"name": "fbnet", "resolution": 32, "width": 0.25, "num_classes": 10}


def start_agent(url: str, token: str, cache: Path, log: Path, cpus: str | None, nice: int) -> subprocess.Popen:
    """`dnas agent local` as its own process, niced and pinned (measurement child included)."""
    cmd = [sys.executable, "-m", "dnas", "agent", "local", "--server", url, "--cache-dir", str(cache), "--wait", "1"]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd, "--cpus", cpus]
    cmd = ["nice", "-n", str(nice), *cmd]
    env = {**__import__("os").environ, "DNAS_AGENT_TOKEN": token}  # never on the command line
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def family_scaling(a: Any, b: Any) -> dict[str, float]:
    """Median ratio b / a of the ops' in-network costs per block family: how differently the costs scale."""
    from search.space.enumerate import enumerate_ops

    space = a.space
    ra, rb, ma, mb = a.rule, b.rule, a.medians, b.medians
    out: dict[str, list[float]] = {}
    for key, spec in enumerate_ops(space).ops.items():
        ca, cb = ra.in_network_us(spec, ma[key]), rb.in_network_us(spec, mb[key])
        if ca > 0:
            out.setdefault(key.split("-")[0], []).append(cb / ca)
    return {fam: round(statistics.median(v), 3) for fam, v in sorted(out.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/cross_device"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--mode", choices=("soft", "hard"), default="hard", help="hard: ~5x cheaper per step")
    parser.add_argument("--lr-theta", type=float, default=0.3)
    parser.add_argument("--search-threads", type=int, default=1, help="torch threads of the searches")
    parser.add_argument("--fraction", type=float, default=0.75, help="per-device budget: x the baseline there")
    parser.add_argument("--fraction-all", type=float, default=0.7, help="all-devices budgets: x the baseline")
    parser.add_argument("--threads", type=int, nargs=2, default=[1, 2], help="the two devices' runtime threads")
    parser.add_argument("--agent-cpus", default="1", help="pin both agents to these CPUs ('' for none)")
    parser.add_argument("--agent-nice", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the agents

    from profiler_service.local_server import running_service
    from search.dnas.config import SearchConfig
    from search.dnas.run import load_tables, run_search
    from search.tables.client import ServiceClient
    from search.tables.cross_device import measure_on_devices, searched_architectures

    started = time.perf_counter()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    with running_service(f"sqlite:///{args.out / 'service.db'}", args.out / "service", lease_seconds=60) as svc:
        admin = ServiceClient(svc.url, svc.admin_token)
        devices, agents = [], []
        try:
            for threads in args.threads:
                name = f"host-{threads}-thread{'s' if threads > 1 else ''}"
                device = admin.register_device(name, "linux")
                devices.append(device)
                log = args.out / f"agent-{name}.log"
                cpus = args.agent_cpus or None
                agents.append(start_agent(svc.url, device["agent_token"], args.out / f"cache-{name}", log, cpus,
                                          args.agent_nice))  # fmt: skip
            profile_s = {}
            for device, threads in zip(devices, args.threads, strict=True):  # one device at a time: no contention
                t0 = time.perf_counter()
                run = admin.wait_for_run(admin.start_run(device["id"], SPACE, {"threads": threads})["id"],
                                         timeout_s=1800, progress=True)  # fmt: skip
                if run["status"] != "published":
                    raise RuntimeError(f"profiling {device['name']} failed: {run['errors'][:3]}")
                profile_s[device["name"]] = round(time.perf_counter() - t0, 1)
            reader = admin.reader_token("bench")
            tables = load_tables([], svc.url, [d["id"] for d in devices], ["latest"], reader, args.out / "tables")
            space = tables[0].space
            baseline = [BASELINE] * len(space.slots)
            base_ms = [t.predict_us(baseline) / 1e3 for t in tables]
            cfg = dict(epochs=args.epochs, warmup_epochs=args.warmup_epochs, batch_size=32, mode=args.mode,
                       lr_w=0.05, lr_theta=args.lr_theta, samples=1, seed=args.seed, workers=0,
                       threads=args.search_threads)  # fmt: skip

            t0 = time.perf_counter()
            per_budgets = tuple(args.fraction * b for b in base_ms)
            per = run_search(tables, "digits", SearchConfig(target_latency_ms=per_budgets, **cfg),
                             args.out / "per-device")  # fmt: skip
            per_search_s = time.perf_counter() - t0
            per_meas = measure_on_devices(admin, searched_architectures([args.out / "per-device"]),
                                          args.out / "per-device-measured")  # fmt: skip

            t0 = time.perf_counter()
            all_budgets = tuple(args.fraction_all * b for b in base_ms)
            joint = run_search(tables, "digits", SearchConfig(target_latency_ms=all_budgets, device_mode="all-devices",
                                                              **cfg), args.out / "all-devices")  # fmt: skip
            all_search_s = time.perf_counter() - t0
            all_meas = measure_on_devices(admin, searched_architectures([args.out / "all-devices"]),
                                          args.out / "all-devices-measured")  # fmt: skip
        finally:
            for agent in agents:
                agent.terminate()
            for agent in agents:
                agent.wait(timeout=60)
    labels = [t.device_info["name"] for t in tables]
    print(json.dumps({
        "bench": "cross_device",
        "space": {k: SPACE[k] for k in ("resolution", "width", "num_classes")} | {"hash": space.hash[:12]},
        "devices": [{"name": lab, "threads": t.config["threads"], "table_version": t.version,
                     "table_sha256": t.content_hash[:16], "prediction_rule": t.rule.kind,
                     "baseline_predicted_ms": round(b, 4)}
                    for lab, t, b in zip(labels, tables, base_ms, strict=True)],
        "agents": {"cpus": args.agent_cpus or None, "nice": args.agent_nice},
        "search": cfg,
        "op_cost_scaling_second_over_first": family_scaling(tables[0], tables[1]),
        "profile_s": profile_s,
        "per_device": {
            "budgets_ms": dict(zip(labels, [round(b, 4) for b in per_budgets], strict=True)),
            "archs": {k: v["arch"] for k, v in per["chosen"].items()},
            "matrix": per_meas["matrix"],
            "own_fastest": per_meas["own_fastest"],
            "budgets": per_meas["budgets"],
            "drift": {d["label"]: d["drift"] for d in per_meas["devices"]},
            "search_s": round(per_search_s, 1),
        },
        "all_devices": {
            "budgets_ms": dict(zip(labels, [round(b, 4) for b in all_budgets], strict=True)),
            "target": joint["target"],
            "arch": joint["chosen"]["arch"],
            "matrix": all_meas["matrix"],
            "budgets": all_meas["budgets"],
            "drift": {d["label"]: d["drift"] for d in all_meas["devices"]},
            "search_s": round(all_search_s, 1),
        },
        "pictures": [str(args.out / p) for p in ("per-device/cost_matrix.png", "per-device-measured/cross_device.png",
                                                 "all-devices-measured/cross_device.png")],
        "wall_s": round(time.perf_counter() - started, 1),
        "note": "one shared 2-core machine: quote with its noise (the even/odd-round matrices in the outputs)",
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
