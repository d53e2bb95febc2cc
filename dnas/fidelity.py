"""How far to trust a latency table: predict whole networks as the sum of their operators, measure the same
networks end to end on the device, compare; optionally fit a calibration on those measurements."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau
from tqdm import tqdm

from dnas.api_client import ServiceClient
from dnas.errors import UserError
from search.space import SearchSpace


def sample_archs(space: SearchSpace, n: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(space.candidates) for _ in space.slots] for _ in range(n)]


def predict_us(space: SearchSpace, medians: dict[str, float], arch: list[str]) -> float:
    """The table's prediction: the plain sum of the network's operators (eq. 3), fixed layers included."""
    return sum(medians[spec.key] for spec in space.network_ops(arch))


def measure_networks(client: ServiceClient, device_id: int, space: SearchSpace, archs: list[list[str]],
                     config: dict[str, Any], timeout_s: float = 3600) -> list[dict[str, Any]]:  # fmt: skip
    """Queue every network on the device, then wait (with a progress bar) until each is measured or failed."""
    body_space = space.to_dict()
    queued = [client.json("POST", f"/v1/devices/{device_id}/network-measurements",
                          json={"space": body_space, "arch": arch, "config": config}) for arch in archs]  # fmt: skip
    pending = {q["key"]: q for q in queued}
    results: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    with tqdm(total=len(pending), desc="networks", unit="net") as bar:
        while pending and time.monotonic() < deadline:
            for key, q in list(pending.items()):
                status = client.json("GET", f"/v1/devices/{device_id}/network-measurements/{key}",
                                     params={"config_hash": q["config_hash"]})  # fmt: skip
                if status["status"] in ("done", "failed"):
                    results[key] = status
                    del pending[key]
                    bar.update(1)
            if pending:
                time.sleep(0.5)
    if pending:
        raise UserError(
            f"{len(pending)} network measurement(s) did not finish in {timeout_s:.0f}s: is an agent running?"
        )
    return [results[q["key"]] for q in queued]


def errors(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    rel = (predicted - measured) / measured
    tau = kendalltau(predicted, measured).statistic if len(predicted) > 1 else float("nan")
    return {
        "mape_pct": float(np.mean(np.abs(rel)) * 100),
        "worst_error_pct": float(rel[np.argmax(np.abs(rel))] * 100),
        "mean_signed_error_pct": float(np.mean(rel) * 100),
        "kendall_tau": float(tau),
    }


def fit_linear(predicted: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """measured ~ scale * predicted + offset, least squares."""
    a, b = np.polyfit(predicted, measured, 1)
    return float(a), float(b)


def leave_one_out(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Each network predicted by a calibration fitted on all the others: an honest error for the calibration."""
    out = np.empty_like(predicted)
    for i in range(len(predicted)):
        mask = np.arange(len(predicted)) != i
        a, b = fit_linear(predicted[mask], measured[mask])
        out[i] = a * predicted[i] + b
    return out


def scatter_png(
    path: Path, predicted: np.ndarray, measured: np.ndarray, calibrated: np.ndarray | None, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(measured / 1e3, predicted / 1e3, label="table sum (raw)", color="#c44")
    if calibrated is not None:
        ax.scatter(measured / 1e3, calibrated / 1e3, label="calibrated (leave-one-out)", color="#48c", marker="x")
    lo = min(measured.min(), predicted.min()) / 1e3 * 0.95
    hi = max(measured.max(), predicted.max()) / 1e3 * 1.05
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, label="predicted = measured")
    ax.set_xlabel("measured end to end (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def validate(client: ServiceClient, device_id: int, space: SearchSpace, n: int, out: Path, *, calibrate: bool,
             seed: int = 0) -> dict[str, Any]:  # fmt: skip
    table = client.json("GET", f"/v1/devices/{device_id}/latency-tables/latest", params={"space_hash": space.hash})
    medians = {e["key"]: e["median_us"] for e in table["entries"]}
    archs = sample_archs(space, n, seed)
    predicted = np.array([predict_us(space, medians, a) for a in archs])
    results = measure_networks(client, device_id, space, archs, table["config"])
    failed = [r for r in results if r["status"] != "done"]
    if failed:
        raise UserError(f"{len(failed)} network(s) failed on the device: {failed[0].get('error')}")
    measured = np.array([r["measurement"]["median_us"] for r in results])
    report: dict[str, Any] = {
        "device_id": device_id,
        "table_version": table["version"],
        "space_hash": space.hash,
        "networks": n,
        "raw": errors(predicted, measured),
    }
    calibrated = None
    if calibrate and n >= 3:
        calibrated = leave_one_out(predicted, measured)
        scale, offset = fit_linear(predicted, measured)
        report["calibrated_leave_one_out"] = errors(calibrated, measured)
        stored = client.json("POST", f"/v1/devices/{device_id}/calibrations", json={
            "table_version": table["version"],
            "model": {"kind": "linear", "scale": scale, "offset_us": offset},
            "metrics": {"raw": report["raw"], "calibrated_leave_one_out": report["calibrated_leave_one_out"], "n": n},
            "fitted_on": [{"key": r["key"], "predicted_us": float(p), "measured_us": float(m)}
                          for r, p, m in zip(results, predicted, measured, strict=True)],
        })  # fmt: skip
        report["calibration"] = {"version": stored["version"], "scale": scale, "offset_us": offset}
    out.mkdir(parents=True, exist_ok=True)
    report["rows"] = [{"arch": a, "predicted_us": float(p), "measured_us": float(m)}
                      for a, p, m in zip(archs, predicted, measured, strict=True)]  # fmt: skip
    scatter_png(out / "fidelity.png", predicted, measured, calibrated,
                f"device {device_id} table v{table['version']}: MAPE {report['raw']['mape_pct']:.1f}%")  # fmt: skip
    (out / "fidelity.json").write_text(json.dumps(report, indent=2))
    return report
