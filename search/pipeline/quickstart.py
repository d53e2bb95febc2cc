"""The quickstart: from a fresh machine to a device-specific architecture, end to end on this host.

Embedded service (SQLite) -> register this host -> local agent -> profile a small space -> fetch the table over
REST -> search on the built-in digits -> retrain the chosen architecture and a fixed baseline -> export both to
ONNX -> measure both end to end on the same device through the agent -> report.json and PNGs.

`run_quickstart` does the job and returns a `QuickstartResult`; `dnas quickstart` (dnas/quickstart.py) only
parses its options and prints. What the run says as it goes is passed to `echo`, one line at a time.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from device_agents.client import AgentClient
from device_agents.local.backend import LocalBackend
from device_agents.loop import Agent
from profiler_service.local_server import running_service
from search.data.datasets import load_data
from search.dnas.config import SearchConfig
from search.dnas.retrain import TrainConfig, int8_accuracy, train_architecture
from search.dnas.run import run_search
from search.space.cost import network_cost
from search.tables.client import ServiceClient, not_published
from search.tables.fidelity import measure_with_anchors
from search.tables.predict import N_ANCHORS

SPACE = {"name": "fbnet", "resolution": 32, "width": 0.25, "num_classes": 10}
MEASURE = {"threads": 1}  # the service's defaults otherwise: 20 interleaved rounds of 3 timed runs per op
BASELINE = "ir_k3_e6"  # every layer: the MobileNetV2-like baseline
TARGET_FRACTION = 0.5  # of the baseline's predicted latency: below what a uniform theta expects, so the search
# has to learn where latency is cheap to spend (at 0.7 a uniform theta already met it, and theta stayed uniform)
STEPS = 8

Echo = Callable[[str], None]


def search_config(target_ms: float, epochs: int, seed: int) -> SearchConfig:
    """A search that visibly learns in four epochs on a CPU, measured on this project's CI machine: soft masks
    (hard mode's per-candidate BN sees ~3 samples of a 32-batch and the weights never train), tau decayed from
    5 to ~1 over the run (a low tau from the start keeps the weights from learning at all), and a theta step
    large enough to move in the ~10 theta steps an epoch of digits gives."""
    return SearchConfig(epochs=epochs, warmup_epochs=1, batch_size=32, mode="soft", lr_w=0.05, lr_theta=0.5,
                        tau0=5.0, tau_decay=0.5, target_latency_ms=target_ms, samples=3, seed=seed)  # fmt: skip


@dataclass(frozen=True)
class NetworkResult:
    """One network of the report: trained, predicted by the table, measured end to end on this host."""

    name: str
    arch: list[str]
    val_accuracy: float
    predicted_latency_ms: float
    measured_latency_ms: float
    prediction_error_pct: float
    # the table priced the machine as it was when profiled; its anchors, measured beside these networks, say how
    # far it moved since: the error of the table itself, with that divided out
    prediction_error_drift_adjusted_pct: float
    params: int
    flops: int
    # int8 runs: the trained network as an fp32 and an int8 ONNX file, both run by onnxruntime on the held-out
    # split (search/dnas/retrain.py's int8_accuracy); None in fp32 runs
    int8: dict[str, Any] | None = None


@dataclass(frozen=True)
class QuickstartResult:
    """What a run found; `to_dict()` is report.json. `out` holds the report, the pictures and the search."""

    out: Path
    device: dict[str, Any]
    table: dict[str, Any]
    space: dict[str, Any]
    search: dict[str, Any]
    retrain_epochs: int
    networks: list[NetworkResult]
    drift_since_profiling: float
    speedup_measured: float
    accuracy_delta_points: float
    step_times_s: dict[str, float]
    wall_s: float
    precision: str = "fp32"

    @property
    def searched(self) -> NetworkResult:
        return self.networks[0]

    @property
    def baseline(self) -> NetworkResult:
        return self.networks[1]

    @property
    def report_path(self) -> Path:
        return self.out / "report.json"

    @property
    def pictures(self) -> list[Path]:
        return [self.out / "theta.png", self.out / "accuracy_vs_latency.png"]

    def to_dict(self) -> dict[str, Any]:
        report = asdict(self)
        del report["out"]
        return report


@dataclass
class StepClock:
    """The run's numbered steps and how long each took (report.json's `step_times_s`): state of one run."""

    echo: Echo
    times: dict[str, float] = field(default_factory=dict)
    _started: float | None = None

    def step(self, n: int, text: str) -> None:
        now = time.perf_counter()
        if self._started is not None:
            self.times[f"step_{n - 1}_s"] = round(now - self._started, 1)
            self.echo(f"    ({now - self._started:.0f} s)")
        self._started = now
        self.echo(f"\n[{n}/{STEPS}] {text}")


def _start_agent(url: str, token: str, cache: Path) -> tuple[threading.Thread, Agent]:
    agent = Agent(AgentClient(url, token), LocalBackend(), cache_dir=cache, wait_seconds=1)
    thread = threading.Thread(target=agent.run, name="local-agent", daemon=True)
    thread.start()
    return thread, agent


def run_quickstart(out: Path, *, search_epochs: int = 4, train_epochs: int = 8,
                   target_fraction: float = TARGET_FRACTION, seed: int = 0, precision: str = "fp32",
                   echo: Echo = lambda line: None) -> QuickstartResult:  # fmt: skip
    """The whole job on this host, written to `out` (report.json, theta.png, accuracy_vs_latency.png, the
    search's outputs); RuntimeError if profiling or a measurement fails.

    `precision` int8: the table is profiled in int8 (every op, probe and anchor quantized by one recipe), the
    search prices int8 latency, both networks are measured as int8 files, and each reports its int8 accuracy
    (onnxruntime, held-out split) beside its fp32 accuracy."""
    started = time.perf_counter()
    clock = StepClock(echo)
    if (out / "service").exists():
        shutil.rmtree(out / "service")  # a fresh embedded service each time: the agent token is shown once
    out.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{out / 'service' / 'dnas.db'}"
    (out / "service").mkdir(parents=True)

    clock.step(1, "starting the embedded profiler service (SQLite, uvicorn on loopback)")
    with (
        running_service(db_url, out / "service", lease_seconds=60) as svc,
        ServiceClient(svc.url, svc.admin_token) as admin,
    ):
        clock.step(2, "registering this host and starting its local agent")
        device = admin.register_device("this-host", "linux")
        thread, agent = _start_agent(svc.url, device["agent_token"], out / "agent-cache")
        try:
            clock.step(
                3,
                f"profiling the FBNet space at {SPACE['resolution']} px, width {SPACE['width']} on this host in "
                f"{precision} (every op, a call-overhead probe per input shape and {N_ANCHORS} anchor networks, in "
                "interleaved rounds)",
            )
            config = MEASURE | {"precision": precision}
            run = admin.wait_for_run(admin.start_run(device["id"], SPACE, config)["id"], timeout_s=900,
                                     progress=True)  # fmt: skip
            if why := not_published(run):
                raise RuntimeError(f"profiling failed: {why}")

            clock.step(4, "fetching the latency table over REST")
            with ServiceClient(svc.url, admin.reader_token("quickstart"), cache_dir=out / "table-cache") as reader:
                table = reader.table(device["id"], precision=precision)
            space, rule = table.space, table.prediction
            per_op = table.rule.per_op_us  # already in each op's in-network time, as the search's LUT has it
            echo(f"    table v{table.version}: {len(table.entries)} ops; a network costs the sum "
                 f"of its ops' in-network times + {rule.constant_us:.1f} us (call overhead "
                 f"{rule.call_overhead_us:.1f} us; {per_op:+.2f} us per computing op; fitted on "
                 f"{len(rule.anchors)} anchor networks)")  # fmt: skip
            baseline_arch = [BASELINE] * len(space.slots)
            target_ms = target_fraction * table.predict_us(baseline_arch) / 1e3

            clock.step(5, f"searching on digits (budget {target_ms:.3f} ms = {target_fraction:.0%} of the baseline's)")
            summary = run_search(table, "digits", search_config(target_ms, search_epochs, seed), out / "search")
            searched_arch = summary["chosen"]["arch"]
            confidence = summary["theta_max_prob_mean"]
            echo(f"    theta learnt: mean per-layer largest probability {confidence:.2f} "
                 f"(uniform: {1 / len(space.candidates):.2f})")  # fmt: skip

            clock.step(6, f"retraining the searched architecture and the baseline ({train_epochs} epochs each)")
            data = load_data("digits", space.resolution, seed=seed)
            trained, int8_acc = {}, {}
            for name, arch in (("searched", searched_arch), ("baseline", baseline_arch)):
                model, result = train_architecture(space, arch, data, TrainConfig(epochs=train_epochs, seed=seed))
                trained[name] = result["val_accuracy"]
                if precision == "int8":
                    int8_acc[name] = int8_accuracy(space, arch, model, data)

            clock.step(
                7,
                "measuring both networks end to end on this host, through the agent, in interleaved rounds "
                "(with the table's anchors, to see how far the machine drifted since profiling)",
            )
            measured = measure_with_anchors(admin, device["id"], table, [searched_arch, baseline_arch])
        finally:
            agent.stopping.set()
            thread.join(timeout=60)

    clock.step(8, "writing the report")
    drift = measured.drift if measured.drift is not None else 1.0
    rows = []
    for (name, arch), measured_us in zip((("searched", searched_arch), ("baseline", baseline_arch)),
                                         measured.median_us, strict=True):  # fmt: skip
        cost = network_cost(space, arch)
        predicted = table.predict_us(arch) / 1e3
        measured_ms = measured_us / 1e3
        rows.append(NetworkResult(
            name=name,
            arch=arch,
            val_accuracy=trained[name],
            predicted_latency_ms=predicted,
            measured_latency_ms=measured_ms,
            prediction_error_pct=(predicted / measured_ms - 1) * 100,
            prediction_error_drift_adjusted_pct=(predicted * drift / measured_ms - 1) * 100,
            params=cost.params,
            flops=cost.macs,
            int8=int8_acc.get(name),
        ))  # fmt: skip
    searched, baseline = rows
    result = QuickstartResult(
        out=out,
        device=table.device_info,
        table=table.provenance | {"prediction_constant_us": rule.constant_us, "prediction_per_op_us": per_op},
        space={k: space.to_dict()[k] for k in ("resolution", "width", "num_classes", "hash")},
        search={"epochs": search_epochs, "target_latency_ms": target_ms, "theta_max_prob_mean": confidence,
                "expected_latency_ms": summary["expected_latency_ms"], "target": summary.get("target")},
        retrain_epochs=train_epochs,
        networks=rows,
        drift_since_profiling=drift,
        speedup_measured=baseline.measured_latency_ms / searched.measured_latency_ms,
        accuracy_delta_points=(searched.val_accuracy - baseline.val_accuracy) * 100,
        step_times_s=dict(clock.times),
        wall_s=time.perf_counter() - started,
        precision=precision,
    )  # fmt: skip
    result.report_path.write_text(json.dumps(result.to_dict(), indent=2))
    shutil.copy(out / "search" / "theta.png", out / "theta.png")
    accuracy_latency_png(out / "accuracy_vs_latency.png", rows, "searched vs baseline on this host")
    return result


def accuracy_latency_png(path: Path, rows: list[NetworkResult], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for row, color in zip(rows, ("#c44", "#48c", "#888", "#888"), strict=False):
        ax.scatter(row.measured_latency_ms, row.val_accuracy * 100, s=70, color=color, zorder=3)
        ax.scatter(row.predicted_latency_ms, row.val_accuracy * 100, s=40, facecolors="none",
                   edgecolors=color, zorder=3)  # fmt: skip
        ax.annotate(row.name, (row.measured_latency_ms, row.val_accuracy * 100),
                    textcoords="offset points", xytext=(6, 6))  # fmt: skip
    ax.set_xlabel("latency on this device (ms): filled = measured end to end, open = table prediction")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
