"""How far to trust a latency table: predict whole networks by the table's rule, measure the same networks
end to end on the device, compare, and say how much of the difference is noise.

Every figure comes with its noise, measured in the same run:
- the networks are queued as one set, so the agent measures them together in interleaved rounds, and the
  *noise ceiling* is the same estimator on their even rounds against their odd rounds: two half-length
  measurements of the same networks taken side by side. It is how far the measurement alone moves a figure
  (the full-length estimate's own noise is about half of it), and it leaves out drift between sessions;
- the table's anchor networks are measured again in the same set: their ratio now/then is the *drift* of
  the device since the table was profiled (a neighbour on a shared machine, heat on a phone). The headline
  figures compare with the raw measurements; the drift-adjusted ones are a diagnostic. Calibrations are
  fitted on drift-adjusted numbers, so they correct the table and not one afternoon's machine, and a
  calibration is stored only when its held-out error beats the table's own rule.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau
from tqdm import tqdm

from search.measurement.rounds import estimate
from search.space.macro import SearchSpace
from search.space.quantize import dtype_of
from search.tables import calibration
from search.tables.client import ServiceClient
from search.tables.schema import PublishedTable, TableError


class FidelityError(RuntimeError):
    """The check could not be made (no agent, a network failed on the device); the message says which."""


def sample_archs(space: SearchSpace, n: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(space.candidates) for _ in space.slots] for _ in range(n)]


def errors(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """The figures a user judges a table by: share within +-5% and +-10%, MAPE, worst and mean signed error,
    and Kendall's tau (does the table rank networks as the device does?)."""
    predicted, measured = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    rel = (predicted - measured) / measured
    tau = kendalltau(predicted, measured).statistic if len(predicted) > 1 else float("nan")
    return {
        "n": len(rel),
        "within_5_pct": float(np.mean(np.abs(rel) <= 0.05)),
        "within_10_pct": float(np.mean(np.abs(rel) <= 0.10)),
        "mape_pct": float(np.mean(np.abs(rel)) * 100),
        "worst_error_pct": float(rel[np.argmax(np.abs(rel))] * 100),
        "mean_signed_error_pct": float(np.mean(rel) * 100),
        "kendall_tau": float(tau),
    }


def measure_set(client: ServiceClient, device_id: int, space: SearchSpace, archs: list[list[str]],
                config: dict[str, Any] | None, timeout_s: float = 3600) -> list[dict[str, Any]]:  # fmt: skip
    """Queue the networks as one set (measured together, in interleaved rounds) and wait for them, with a
    progress bar. Returns each network's status, in the order given."""
    queued = client.queue_networks(device_id, space, archs, config)
    deadline = time.monotonic() + timeout_s
    status = queued
    with tqdm(total=len(status["networks"]), desc="networks", unit="net") as bar:
        while True:
            done = sum(1 for n in status["networks"] if n["status"] in ("done", "failed"))
            bar.update(done - bar.n)
            if status["status"] in ("done", "failed"):
                break
            if time.monotonic() > deadline:
                raise FidelityError(
                    f"{len(status['networks']) - done} network measurement(s) did not finish in {timeout_s:.0f}s: "
                    "is an agent serving this device?"
                )
            time.sleep(0.5)
            status = client.network_set(device_id, queued["set"])
    by_key = {n["key"]: n for n in status["networks"]}
    dtype = dtype_of(config.get("precision", "fp32"))  # an int8 set is measured as int8 networks, own keys
    return [by_key[space.network_key(arch, dtype)] for arch in archs]


@dataclass(frozen=True)
class AnchoredMeasurement:
    """Networks measured end to end beside the table's anchor networks, in the same interleaved rounds.

    `drift` is the median over anchors of (measured now / when the table was profiled): how far the device
    moved since (a neighbour on a shared machine, heat on a phone); None when the table has no anchors."""

    networks: list[dict[str, Any]]  # each network's measurement (median_us, round_medians_us, ...), in order
    anchor_ratios: list[float]

    @property
    def drift(self) -> float | None:
        return statistics.median(self.anchor_ratios) if self.anchor_ratios else None

    @property
    def median_us(self) -> list[float]:
        return [float(m["median_us"]) for m in self.networks]


def measure_with_anchors(client: ServiceClient, device_id: int, table: PublishedTable,
                         archs: list[list[str]]) -> AnchoredMeasurement:  # fmt: skip
    """Measure `archs` on the device with the table's anchors, by the table's own settings (threads, warm-up,
    rounds), as one set; FidelityError if any network failed. The one home of "measure, and say how far the
    device drifted since the table", which validate, the cross-device check and the quickstart share."""
    anchors = table.anchors
    results = measure_set(client, device_id, table.space, [*archs, *(a for a, _ in anchors)], table.config)
    failed = [r for r in results if r["status"] != "done"]
    if failed:
        raise FidelityError(f"{len(failed)} network(s) failed on device {device_id}: {failed[0].get('error')}")
    now = [r["measurement"] for r in results]
    ratios = [m["median_us"] / then for m, (_, then) in zip(now[len(archs) :], anchors, strict=True)]
    return AnchoredMeasurement(networks=now[: len(archs)], anchor_ratios=ratios)


def halves(measurement: dict[str, Any]) -> tuple[float, float] | None:
    """The estimate from even rounds and from odd rounds: two measurements of the same thing in one run."""
    rounds = measurement.get("round_medians_us") or []
    if len(rounds) < 2:
        return None
    return estimate(rounds[0::2]), estimate(rounds[1::2])


def validate(client: ServiceClient, device_id: int, space: SearchSpace, n: int, out: Path, *, calibrate: bool,
             seed: int = 0, version: str = "latest", precision: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Sample n networks, measure them whole on the device beside the table's anchors, compare with the table's
    rule. `precision` picks the table (and so how the networks are exported and measured): asked for int8,
    it never checks an fp32 table."""
    try:
        table = client.table(device_id, version, space.hash, disk_cache=False, precision=precision)
    except TableError as exc:
        raise FidelityError(str(exc)) from None
    archs = sample_archs(space, n, seed)
    measured_set = measure_with_anchors(client, device_id, table, archs)
    nets = measured_set.networks
    predicted = np.array([table.predict_us(a) for a in archs])
    measured = np.array(measured_set.median_us)
    report: dict[str, Any] = {
        "device_id": device_id,
        "table_version": table.version,
        "table_sha256": table.content_sha256,
        "prediction_rule": table.prediction.rule,
        "precision": table.precision,
        "space_hash": space.hash,
        "networks": n,
        "seed": seed,
        "raw": errors(predicted, measured),
    }
    split = [halves(m) for m in nets]
    if all(s is not None for s in split):
        even, odd = np.array([s[0] for s in split]), np.array([s[1] for s in split])  # type: ignore[index]
        what = "the networks' even rounds against their odd rounds (two half-length measurements, one session)"
        report["noise_ceiling"] = errors(even, odd) | {"what": what}
    drift = 1.0
    if measured_set.drift is not None:
        drift = measured_set.drift
        what = "the table's anchor networks measured now / when the table was profiled"
        report["drift"] = {"ratio": drift, "anchors": measured_set.anchor_ratios, "what": what}
        report["drift_adjusted"] = errors(predicted * drift, measured)
    calibrated = None
    if calibrate:
        calibrated = _calibrate(client, device_id, space, table, archs, measured, drift, report)
    report["rows"] = [{"arch": a, "predicted_us": float(p), "measured_us": float(m)}
                      for a, p, m in zip(archs, predicted, measured, strict=True)]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    scatter_png(out / "fidelity.png", predicted, measured, calibrated, drift, report)
    (out / "fidelity.json").write_text(json.dumps(report, indent=2))
    return report


MIN_CALIBRATION_NETWORKS = 20  # a 5-parameter fit; fewer networks and the k-fold fits are near-exact


def _calibrate(client: ServiceClient, device_id: int, space: SearchSpace, table: PublishedTable, archs: list[list[str]],
               measured: np.ndarray, drift: float, report: dict[str, Any]) -> np.ndarray | None:  # fmt: skip
    """Fit a family calibration on drift-adjusted measurements; report its error held out only (5-fold), and
    store it (for `dnas search` to apply) only if that error beats the table's own rule."""
    if len(archs) < MIN_CALIBRATION_NETWORKS:
        why = f"needs at least {MIN_CALIBRATION_NETWORKS} networks, got {len(archs)}"
        report["calibration"] = {"stored": False, "why": why}
        return None
    try:
        rule, medians = table.rule, table.medians
    except TableError as exc:
        raise FidelityError(str(exc)) from None
    x = np.array([calibration.features(space, rule, medians, a) for a in archs])
    held_out = calibration.kfold_predictions(x, measured / drift)
    report["calibrated_held_out"] = errors(held_out, measured) | {"what": "5-fold held out, against the measurements"}
    adjusted = errors(held_out * drift, measured)
    report["calibrated_held_out_drift_adjusted"] = adjusted
    rule_error = report.get("drift_adjusted", report["raw"])["mape_pct"]
    if adjusted["mape_pct"] >= rule_error:
        report["calibration"] = {"stored": False, "why": f"held-out MAPE {adjusted['mape_pct']:.2f}% is no better "
                                                         f"than the table rule's {rule_error:.2f}%"}  # fmt: skip
        return held_out
    model = calibration.fit(x, measured / drift)
    keys = ("raw", "drift_adjusted", "calibrated_held_out", "calibrated_held_out_drift_adjusted", "noise_ceiling")
    body = {
        "table_version": table.version,
        "model": model,
        "metrics": {k: report[k] for k in keys if k in report} | {"n": len(archs), "drift": drift},
        "fitted_on": [
            {"arch": a, "measured_adjusted_us": float(m)} for a, m in zip(archs, measured / drift, strict=True)
        ],
    }
    stored = client.store_calibration(device_id, body)
    report["calibration"] = {"stored": True, "version": stored["version"], **model}
    return held_out


def scatter_png(path: Path, predicted: np.ndarray, measured: np.ndarray, calibrated: np.ndarray | None,
                drift: float, report: dict[str, Any]) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 6))
    ms = measured / 1e3
    lo, hi = min(ms.min(), predicted.min() / 1e3) * 0.93, max(ms.max(), predicted.max() / 1e3) * 1.07
    xs = np.array([lo, hi])
    ax.fill_between(xs, xs * 0.95, xs * 1.05, color="#ddd", label="+-5%")
    ax.plot(xs, xs, color="black", lw=0.8)
    raw = report["raw"]
    ax.scatter(ms, predicted / 1e3, color="#c44", s=22,
               label=f"table rule: {raw['within_5_pct']:.0%} within 5%, tau {raw['kendall_tau']:.2f}")  # fmt: skip
    if calibrated is not None:
        cal = report["calibrated_held_out"]
        ax.scatter(ms, calibrated / 1e3, color="#48c", marker="x", s=26,
                   label=f"calibrated, held out: {cal['within_5_pct']:.0%} within 5%")  # fmt: skip
    noise = report.get("noise_ceiling")
    title = f"device {report['device_id']}, table v{report['table_version']}: MAPE {raw['mape_pct']:.1f}%"
    if noise:
        title += f"\nnoise ceiling (even vs odd rounds) MAPE {noise['mape_pct']:.1f}%, tau {noise['kendall_tau']:.2f}"
    if "drift" in report:
        title += f"; drift since profiling {drift - 1:+.1%}"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("measured end to end (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
