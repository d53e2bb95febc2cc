"""`dnas quickstart`: from a fresh machine to a device-specific architecture, end to end on this host.

Embedded service (SQLite) -> register this host -> local agent -> profile a small space -> fetch the table over
REST -> search on the built-in digits -> retrain the chosen architecture and a fixed baseline -> export both to
ONNX -> measure both end to end on the same device through the agent -> report.json and PNGs.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from dnas.api_client import ServiceClient
from dnas.service_cli import wait_for_run
from profiler_service.local_server import running_service
from search.data.datasets import load_data
from search.dnas.config import SearchConfig
from search.dnas.retrain import TrainConfig, int8_accuracy, train_architecture
from search.dnas.run import run_search
from search.space.cost import network_cost
from search.tables.fidelity import measure_set
from search.tables.latency import TableClient

SPACE = {"name": "fbnet", "resolution": 32, "width": 0.25, "num_classes": 10}
MEASURE = {"threads": 1}  # the service's defaults otherwise: 20 interleaved rounds of 3 timed runs per op
BASELINE = "ir_k3_e6"  # every layer: the MobileNetV2-like baseline
TARGET_FRACTION = 0.5  # of the baseline's predicted latency: below what a uniform theta expects, so the search
# has to learn where latency is cheap to spend (at 0.7 a uniform theta already met it, and theta stayed uniform)


def search_config(target_ms: float, epochs: int, seed: int) -> SearchConfig:
    """A search that visibly learns in four epochs on a CPU, measured on this project's CI machine: soft masks
    (hard mode's per-candidate BN sees ~3 samples of a 32-batch and the weights never train), tau decayed from
    5 to ~1 over the run (a low tau from the start keeps the weights from learning at all), and a theta step
    large enough to move in the ~10 theta steps an epoch of digits gives."""
    return SearchConfig(epochs=epochs, warmup_epochs=1, batch_size=32, mode="soft", lr_w=0.05, lr_theta=0.5,
                        tau0=5.0, tau_decay=0.5, target_latency_ms=target_ms, samples=3, seed=seed)  # fmt: skip


_T0 = [0.0]
_TIMES: dict[str, float] = {}


def _step(n: int, text: str) -> None:
    now = time.perf_counter()
    if _T0[0]:
        _TIMES[f"step_{n - 1}_s"] = round(now - _T0[0], 1)
        print(f"    ({now - _T0[0]:.0f} s)", flush=True)
    _T0[0] = now
    print(f"\n[{n}/8] {text}", flush=True)


def _start_agent(url: str, token: str, cache: Path) -> tuple[threading.Thread, Any]:
    from device_agents.client import AgentClient
    from device_agents.local.backend import LocalBackend
    from device_agents.loop import Agent

    agent = Agent(AgentClient(url, token), LocalBackend(), cache_dir=cache, wait_seconds=1)
    thread = threading.Thread(target=agent.run, name="local-agent", daemon=True)
    thread.start()
    return thread, agent


def accuracy_latency_png(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for row, color in zip(rows, ("#c44", "#48c", "#888", "#888"), strict=False):
        ax.scatter(row["measured_latency_ms"], row["val_accuracy"] * 100, s=70, color=color, zorder=3)
        ax.scatter(row["predicted_latency_ms"], row["val_accuracy"] * 100, s=40, facecolors="none",
                   edgecolors=color, zorder=3)  # fmt: skip
        ax.annotate(row["name"], (row["measured_latency_ms"], row["val_accuracy"] * 100),
                    textcoords="offset points", xytext=(6, 6))  # fmt: skip
    ax.set_xlabel("latency on this device (ms): filled = measured end to end, open = table prediction")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_quickstart(out: Path, *, search_epochs: int = 4, train_epochs: int = 8,
                   target_fraction: float = TARGET_FRACTION, seed: int = 0,
                   precision: str = "fp32") -> dict[str, Any]:  # fmt: skip
    """`precision` int8: the table is profiled in int8 (every op, probe and anchor quantized by one recipe),
    the search prices int8 latency, both networks are measured as int8 files, and each reports its int8
    accuracy (onnxruntime, held-out split) beside its fp32 accuracy."""
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    _T0[0] = 0.0
    if (out / "service").exists():
        shutil.rmtree(out / "service")  # a fresh embedded service each time: the agent token is shown once
    out.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{out / 'service' / 'dnas.db'}"
    (out / "service").mkdir(parents=True)

    _step(1, "starting the embedded profiler service (SQLite, uvicorn on loopback)")
    with running_service(db_url, out / "service", lease_seconds=60) as svc:
        # A run's ops are exported (at int8 also quantized) inside the POST that creates it: minutes on a busy host.
        admin = ServiceClient(svc.url, svc.admin_token, timeout=1800)
        _step(2, "registering this host and starting its local agent")
        device = admin.json("POST", "/v1/devices", json={"name": "this-host", "platform": "linux"})
        thread, agent = _start_agent(svc.url, device["agent_token"], out / "agent-cache")
        try:
            _step(
                3,
                f"profiling the FBNet space at {SPACE['resolution']} px, width {SPACE['width']} on this host in "
                f"{precision} (every op, a call-overhead probe per input shape and 8 anchor networks, in "
                "interleaved rounds)",
            )
            body = {"device_id": device["id"], "space": SPACE, "config": MEASURE | {"precision": precision}}
            run = admin.json("POST", "/v1/profiling-runs", json=body)
            run = wait_for_run(admin, run["id"], timeout_s=900)
            if run["status"] != "published":
                raise RuntimeError(f"profiling failed: {run['errors'][:3]}")

            _step(4, "fetching the latency table over REST")
            reader = admin.json("POST", "/v1/tokens", json={"name": "quickstart"})["token"]
            table = TableClient(svc.url, reader, out / "table-cache").fetch(device["id"], precision=precision)
            space = table.space
            rule = table.payload["prediction"]
            n_ops = len(table.payload["entries"])
            print(f"    table v{table.payload['version']}: {n_ops} ops; a network costs the sum "
                  f"of its ops' in-network times + {rule['constant_us']:.1f} us (call overhead "
                  f"{rule['call_overhead_us']:.1f} us; fitted on {len(rule['anchors'])} anchor networks)")  # fmt: skip
            baseline_arch = [BASELINE] * len(space.slots)
            target_ms = target_fraction * table.predict_us(baseline_arch) / 1e3

            _step(5, f"searching on digits (budget {target_ms:.3f} ms = {target_fraction:.0%} of the baseline's)")
            summary = run_search(table, "digits", search_config(target_ms, search_epochs, seed), out / "search")
            searched_arch = summary["chosen"]["arch"]
            confidence = summary["theta_max_prob_mean"]
            print(f"    theta learnt: mean per-layer largest probability {confidence:.2f} "
                  f"(uniform: {1 / len(space.candidates):.2f})")  # fmt: skip

            _step(6, f"retraining the searched architecture and the baseline ({train_epochs} epochs each)")
            data = load_data("digits", space.resolution, seed=seed)
            trained, int8_acc = {}, {}
            for name, arch in (("searched", searched_arch), ("baseline", baseline_arch)):
                model, result = train_architecture(space, arch, data, TrainConfig(epochs=train_epochs, seed=seed))
                trained[name] = result["val_accuracy"]
                if precision == "int8":
                    int8_acc[name] = int8_accuracy(space, arch, model, data)

            _step(
                7,
                "measuring both networks end to end on this host, through the agent, in interleaved rounds "
                "(with the table's anchors, to see how far the machine drifted since profiling)",
            )
            anchors = [(a["arch"], a["measured_us"]) for a in rule["anchors"]]
            measured = measure_set(admin, device["id"], space, [searched_arch, baseline_arch, *(a for a, _ in anchors)],
                                   table.payload["config"])  # fmt: skip
        finally:
            agent.stopping.set()
            thread.join(timeout=60)

    _step(8, "writing the report")
    failed = [m for m in measured if m["status"] != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} network(s) failed on this host: {failed[0].get('error')}")
    ratios = [m["measurement"]["median_us"] / then for m, (_, then) in zip(measured[2:], anchors, strict=True)]
    drift = statistics.median(ratios) if ratios else 1.0
    rows = []
    for (name, arch), m in zip((("searched", searched_arch), ("baseline", baseline_arch)), measured[:2], strict=True):
        cost = network_cost(space, arch)
        predicted = table.predict_us(arch) / 1e3
        measured_ms = m["measurement"]["median_us"] / 1e3
        rows.append({
            "name": name,
            "arch": arch,
            "val_accuracy": trained[name],
            **int8_acc.get(name, {}),
            "predicted_latency_ms": predicted,
            "measured_latency_ms": measured_ms,
            "prediction_error_pct": (predicted / measured_ms - 1) * 100,
            # the table priced the machine as it was when profiled; its anchors, measured beside these networks,
            # say how far it moved since: the error of the table itself, with that divided out
            "prediction_error_drift_adjusted_pct": (predicted * drift / measured_ms - 1) * 100,
            "params": cost.params,
            "flops": cost.macs,
        })  # fmt: skip
    searched, baseline = rows
    report = {
        "precision": precision,
        "device": table.payload["device"],
        "table": table.provenance | {"prediction_constant_us": rule["constant_us"]},
        "space": {k: space.to_dict()[k] for k in ("resolution", "width", "num_classes", "hash")},
        "search": {"epochs": search_epochs, "target_latency_ms": target_ms, "theta_max_prob_mean": confidence,
                   "expected_latency_ms": summary["expected_latency_ms"], "target": summary.get("target")},
        "retrain_epochs": train_epochs,
        "networks": rows,
        "drift_since_profiling": drift,
        "speedup_measured": baseline["measured_latency_ms"] / searched["measured_latency_ms"],
        "accuracy_delta_points": (searched["val_accuracy"] - baseline["val_accuracy"]) * 100,
        "step_times_s": dict(_TIMES),
        "wall_s": time.perf_counter() - started,
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2))
    shutil.copy(out / "search" / "theta.png", out / "theta.png")
    accuracy_latency_png(out / "accuracy_vs_latency.png", rows, "searched vs baseline on this host")
    return report


def print_summary(report: dict[str, Any], out: Path) -> None:
    print("\n" + "=" * 86)
    print(f"{'':10s} {'accuracy':>9s} {'predicted':>10s} {'measured':>9s} {'error':>7s} {'drift-adj.':>10s} "
          f"{'params':>8s} {'MACs':>8s}")  # fmt: skip
    for r in report["networks"]:
        print(f"{r['name']:10s} {r['val_accuracy'] * 100:8.2f}% {r['predicted_latency_ms']:8.3f}ms "
              f"{r['measured_latency_ms']:7.3f}ms {r['prediction_error_pct']:+6.1f}% "
              f"{r['prediction_error_drift_adjusted_pct']:+9.1f}% {r['params'] / 1e3:7.1f}K "
              f"{r['flops'] / 1e6:7.2f}M")  # fmt: skip
    drift = report["drift_since_profiling"]
    print(f"the machine ran {drift - 1:+.1%} vs when the table was profiled (its anchor networks, measured again;"
          " drift-adj.: the error with that divided out)"
          + ("; a neighbour or heat: predictions are only as good as the device stays" if abs(drift - 1) > 0.05
             else ""))  # fmt: skip
    if report.get("precision", "fp32") != "fp32":
        print(f"latencies above are {report['precision']}: the table, the search and both measured files")
        for r in report["networks"]:
            if "int8_val_accuracy" in r:
                print(f"{r['name']:10s} int8 accuracy {r['int8_val_accuracy'] * 100:.2f}% against fp32 "
                      f"{r['fp32_onnx_val_accuracy'] * 100:.2f}% (both onnxruntime, held-out split)")  # fmt: skip
    print(f"theta learnt: mean per-layer largest probability {report['search']['theta_max_prob_mean']:.2f}")
    print(f"searched is {report['speedup_measured']:.2f}x faster measured, "
          f"{report['accuracy_delta_points']:+.2f} accuracy points vs the baseline "
          f"({report['wall_s'] / 60:.1f} min)")  # fmt: skip
    print(f"report: {out / 'report.json'}; pictures: {out / 'theta.png'}, {out / 'accuracy_vs_latency.png'}")
