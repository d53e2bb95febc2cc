"""A per-device search over published tables: HW-NAS-Bench's Pixel 3 and Raspberry Pi 4, imported with
`dnas table import`, searched together (`device_mode per-device`: shared weights, a theta per device), and
the cost matrix of the two networks it returns on both devices.

PREDICTED ONLY. No Pixel 3 or Raspberry Pi 4 is here: every cell is the device's published table summed by
its plain-sum rule (how HW-NAS-Bench itself defines a network's latency), not a measurement. The matrix shows
what the tables say, that the search acts on their differences, and nothing about how faithful they are.

`imported_cost_matrix` is the function; `bench.targets` calls it and prints its result. The equivalent CLI:

    dnas table import HW-NAS-Bench-v1_0.pickle --hw pixel3 --dataset cifar10
    dnas table import HW-NAS-Bench-v1_0.pickle --hw raspi4 --dataset cifar10
    dnas search --device P --device R --target-latency-ms TP --target-latency-ms TR --data digits --out OUT
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

PREDICTED_ONLY = (
    "PREDICTED ONLY: every latency below is a published HW-NAS-Bench table summed by its plain-sum rule; no "
    "Pixel 3 or Raspberry Pi 4 measured these networks"
)
BASELINE = "ir_k3_e6"  # the baseline network: this block in every layer (MobileNetV2's inverted residual)


def import_devices(
    server: str,
    admin_token: str,
    file: Path,
    hw_devices: Sequence[str] = ("pixel3", "raspi4"),
    dataset: str = "cifar10",
) -> dict[str, dict[str, Any]]:
    """Import each device's table from the file (an import of numbers already there publishes nothing new).
    -> hw device -> the service's answer (device, table, ops, zero_priced, energy)."""
    data = Path(file).read_bytes()
    out = {}
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {admin_token}"}, timeout=120) as client:
        for hw in hw_devices:
            resp = client.post("/v1/latency-tables/import", params={"hw_device": hw, "dataset": dataset}, content=data)
            if resp.status_code not in (200, 201):
                raise RuntimeError(f"import of {hw} refused: HTTP {resp.status_code} {resp.text[:300]}")
            out[hw] = resp.json()
    return out


def imported_cost_matrix(
    server: str,
    token: str,
    tables: Sequence[tuple[int, int]],
    out: Path,
    *,
    budget_ratio: float = 0.6,
    epochs: int = 4,
    steps: int = 10,
    batch: int = 32,
    seed: int = 0,
    threads: int = 1,
    data: str = "digits",
) -> dict[str, Any]:
    """One per-device search over the given (device id, table version) pairs, each with a budget of
    `budget_ratio` x its own baseline network (`BASELINE` in every layer, priced by its own table); returns
    the cost matrix (architectures x devices, predicted ms) with what each device chose and its budget."""
    from search.dnas.config import SearchConfig
    from search.dnas.run import run_search
    from search.tables.client import ServiceClient
    from search.tables.device_matrix import device_labels
    from search.tables.latency import build_lut

    with ServiceClient(server, token, cache_dir=Path(out) / "table-cache") as client:
        fetched = [client.table(device, str(version)) for device, version in tables]
    space = fetched[0].space
    baseline = [space.candidates.index(BASELINE)] * len(space.slots)
    baselines_ms = [build_lut(space, t).of_arch(baseline) / 1e3 for t in fetched]
    budgets_ms = tuple(round(budget_ratio * b, 4) for b in baselines_ms)
    cfg = SearchConfig(
        epochs=epochs,
        warmup_epochs=1,
        batch_size=batch,
        mode="hard",
        steps_per_epoch=steps,
        threads=threads,
        samples=1,
        workers=0,
        validate=False,
        tensorboard=False,
        seed=seed,
        target_latency_ms=budgets_ms,
        device_mode="per-device",
    )
    logging.getLogger("dnas.search").setLevel(logging.WARNING)
    summary = run_search(fetched, data, cfg, Path(out))
    labels = device_labels(fetched)
    matrix = summary["cost_matrix"]
    return {
        "predicted_only": True,
        "note": PREDICTED_ONLY,
        "devices": labels,
        "tables": [
            {
                "label": lab,
                "device": t.device_info,
                "version": t.version,
                "source": (t.imported_from or {}).get("source"),
                "rule": t.prediction.rule,
            }
            for lab, t in zip(labels, fetched, strict=True)
        ],
        "space": {
            "resolution": space.resolution,
            "width": space.width,
            "head_c": space.head_c,
            "num_classes": space.num_classes,
            "hash": space.hash,
        },
        "baseline": f"{BASELINE} in every layer",
        "baseline_ms": dict(zip(labels, [round(b, 4) for b in baselines_ms], strict=True)),
        "budget_ratio": budget_ratio,
        "budgets_ms": dict(zip(labels, budgets_ms, strict=True)),
        "chosen": {lab: summary["chosen"][lab]["arch"] for lab in labels},
        "met": {lab: t["met"] for lab, t in (summary["target"] or {}).items()},
        "cost_matrix": matrix,
        "leans_to_own_device": _leans(matrix),
        "search": {
            "epochs": epochs,
            "steps_per_phase": steps,
            "batch": batch,
            "seed": seed,
            "data": data,
            "mode": "hard",
        },
    }


def _leans(matrix: dict[str, Any]) -> dict[str, bool]:
    """For each device: does the network searched for it lean to it? Each network's costs are divided by
    their geometric mean over the devices (so a network cheap everywhere does not win every column); the
    device's own network should then be the cheapest in the device's column. Absolute speed would confound
    this with the budgets: a network searched under a tighter budget is faster everywhere."""
    pred = matrix["predicted_ms"]
    rel = [[v / math.prod(row) ** (1 / len(row)) for v in row] for row in pred]
    out = {}
    for j, device in enumerate(matrix["devices"]):
        own = matrix["architectures"].index(f"for {device}")
        out[device] = rel[own][j] == min(row[j] for row in rel)
    return out


def format_matrix(result: dict[str, Any]) -> str:
    """The matrix as text, its PREDICTED ONLY caveat first."""
    matrix = result["cost_matrix"]
    width = max(len(a) for a in matrix["architectures"]) + 2
    lines = [result["note"], "", " " * width + "".join(f"{d:>22s}" for d in matrix["devices"])]
    for name, row in zip(matrix["architectures"], matrix["predicted_ms"], strict=True):
        lines.append(f"{name:<{width}s}" + "".join(f"{v:>19.3f} ms" for v in row))
    lines.append(
        "budgets: "
        + ", ".join(f"{d} {b:.3f} ms" for d, b in result["budgets_ms"].items())
        + f" ({result['budget_ratio']}x each device's {result['baseline']})"
    )
    return "\n".join(lines)
