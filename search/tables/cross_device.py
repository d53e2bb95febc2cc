"""Measure searched architectures on every device they were searched for (`dnas validate --arch`).

A search over several devices predicts a cost matrix (architectures x devices). This measures it: on each
device, every architecture plus that table's anchor networks go to the device's agent as one network set
(measured together, in interleaved rounds: see search/tables/fidelity.py), with the table's own measurement
settings (threads, warm-up, rounds). What it reports, per device:
- predicted (the table's rule) and measured milliseconds of every architecture;
- the drift since profiling (anchors now / then);
- per-device search: is the architecture searched for this device the fastest here, by prediction and by
  measurement, and does the measured order hold in the even rounds and in the odd rounds alone;
- a budget (all-devices or per-device target): is each architecture within it, predicted and measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from search.space.macro import SearchSpace
from search.tables.client import ServiceClient
from search.tables.device_matrix import matrix_png
from search.tables.fidelity import FidelityError, halves, measure_with_anchors


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FidelityError(f"cannot read {path}: {exc}") from None


def _tables_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc.get("latency_tables"):
        return list(doc["latency_tables"])
    if doc.get("latency_table"):
        return [doc["latency_table"]]
    return []


def _key(table: dict[str, Any]) -> tuple[Any, Any]:
    """A table's identity across documents: (device id, version)."""
    return (table.get("device") or {}).get("id"), table.get("version")


def searched_architectures(paths: list[Path]) -> dict[str, Any]:
    """What to measure, from a search's output folder (or its search.json: every device's chosen network) or
    from architecture JSON files: the space, named architectures, the tables (devices) they were searched
    against, which device each was searched for (`own`, by table key) and the budgets (by table key)."""
    archs: dict[str, list[str]] = {}
    own: dict[str, tuple[Any, Any]] = {}
    budgets: dict[tuple[Any, Any], float] = {}
    tables: dict[tuple[Any, Any], dict[str, Any]] = {}
    space: dict[str, Any] | None = None

    def add(name: str, doc: dict[str, Any]) -> None:
        nonlocal space
        if space is None:
            space = doc["space"]
        elif doc["space"].get("hash") != space.get("hash"):
            raise FidelityError(f"{name} belongs to another space than the other architectures")
        archs[name] = list(doc["arch"])
        mine = _tables_of(doc)
        for t in mine:
            tables.setdefault(_key(t), t)
        searched_for = None
        if doc.get("latency_table"):  # searched for this device (one device, or its own in a per-device search)
            searched_for = _key(doc["latency_table"])
            own[name] = searched_for
        target = doc.get("target") or {}
        if isinstance(target.get("latency_ms"), int | float) and searched_for is not None:
            budgets[searched_for] = float(target["latency_ms"])
        by_label = {_label(t): _key(t) for t in mine}
        for label, ms in (target.get("budgets_ms") or {}).items():
            if ms is not None and label in by_label:
                budgets[by_label[label]] = float(ms)

    for path in paths:
        summary_path = path / "search.json" if path.is_dir() else path
        doc = _read(summary_path)
        if "chosen" in doc and "arch" not in doc:  # a search's summary
            folder = summary_path.parent
            chosen = doc["chosen"]
            if "arch" in chosen:  # one architecture (one device, or all-devices)
                add(folder.name or "searched", _read(folder / doc.get("chosen_file", chosen.get("file", ""))))
            else:  # per-device: one per device
                for label, entry in chosen.items():
                    add(f"for {label}", _read(folder / entry["file"]))
        else:
            add(path.stem, doc)
    if space is None:
        raise FidelityError("no architecture found in " + ", ".join(map(str, paths)))
    return {"space": space, "archs": archs, "own": own, "budgets_ms": budgets, "tables": tables}


def _label(table: dict[str, Any]) -> str:
    device = table.get("device") or {}
    return str(table.get("label") or device.get("name") or f"device {device.get('id')}")


def measure_on_devices(client: ServiceClient, found: dict[str, Any], out: Path,
                       devices: list[int] | None = None) -> dict[str, Any]:  # fmt: skip
    """Measure every architecture of `found` (searched_architectures) on each device of its tables (or
    `devices`, on their tables' versions), one device after another; write cross_device.json and .png."""
    space = SearchSpace.from_dict(found["space"])
    names, archs = list(found["archs"]), list(found["archs"].values())
    keys = [k for k in found["tables"] if devices is None or k[0] in devices]
    tables = [found["tables"][k] for k in keys]
    if not tables:
        raise FidelityError("none of the architectures records a table of a device on this service")
    per_device, predicted, measured, even, odd = [], [], [], [], []
    for prov in tables:
        device_id = (prov.get("device") or {}).get("id")
        if not device_id:
            raise FidelityError(f"table of {_label(prov)} was not fetched from a service: no device to measure on")
        table = client.table(device_id, str(prov.get("version") or "latest"), space.hash, disk_cache=False)
        if prov.get("content_sha256") and table.content_sha256 != prov["content_sha256"]:
            raise FidelityError(f"device {device_id}'s table v{table.version} is not the one searched against")
        measured_set = measure_with_anchors(client, device_id, table, archs)
        nets = measured_set.networks
        predicted.append([table.predict_us(a) / 1e3 for a in archs])
        measured.append([m["median_us"] / 1e3 for m in nets])
        split = [halves(m) for m in nets]
        even.append([s[0] / 1e3 if s else None for s in split])
        odd.append([s[1] / 1e3 if s else None for s in split])
        per_device.append({"label": _label(prov), "device_id": device_id, "table_version": table.version,
                           "table_sha256": table.content_sha256, "config": table.config,
                           "drift": measured_set.drift})  # fmt: skip
    labels = [d["label"] for d in per_device]

    def by_arch(columns: list[list[Any]]) -> list[list[Any]]:  # device-major -> architecture rows
        return [[round(col[i], 4) if col[i] is not None else None for col in columns] for i in range(len(archs))]

    report: dict[str, Any] = {
        "space_hash": space.hash,
        "devices": per_device,
        "matrix": {
            "devices": labels,
            "architectures": names,
            "predicted_ms": by_arch(predicted),
            "measured_ms": by_arch(measured),
            "measured_even_rounds_ms": by_arch(even),
            "measured_odd_rounds_ms": by_arch(odd),
        },
        "archs": dict(zip(names, archs, strict=True)),
    }
    own_cols = {n: keys.index(found["own"][n]) for n in names if found["own"].get(n) in keys}
    report["own_fastest"] = _own_fastest(own_cols, names, labels, predicted, measured, even, odd)
    report["budgets"] = _budgets({keys.index(k): ms for k, ms in found["budgets_ms"].items() if k in keys},
                                 own_cols, names, labels, predicted, measured)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    matrix_png(out / "cross_device.png", report["matrix"], "searched architectures on every device:\npredicted "
               "(table rule) and measured end to end through each device's agent", own_cols or None)  # fmt: skip
    (out / "cross_device.json").write_text(json.dumps(report, indent=2))
    return report


def _own_fastest(own: dict[str, int], names: list[str], labels: list[str], *columns: list[list[Any]]) -> list[dict]:
    """Per device that has an architecture searched for it (with others to compare): is it the fastest there?
    `own`: architecture -> its device's column; `columns`: predicted, measured, even rounds, odd rounds
    (device-major)."""
    rows = []
    for d, label in enumerate(labels):
        mine = [i for i, n in enumerate(names) if own.get(n) == d]
        if not mine or len(names) < 2:
            continue
        i = mine[0]
        verdicts = {}
        for key, col in zip(("predicted", "measured", "measured_even_rounds", "measured_odd_rounds"), columns,
                            strict=True):  # fmt: skip
            values = col[d]
            if any(v is None for v in values):
                continue
            verdicts[key] = all(values[i] < v for j, v in enumerate(values) if j != i)
        rows.append({"device": label, "architecture": names[i], "fastest_here": verdicts})
    return rows


def _budgets(budgets: dict[int, float], own: dict[str, int], names: list[str], labels: list[str],
             predicted: list[list[float]], measured: list[list[float]]) -> list[dict]:  # fmt: skip
    """Each budget against the architectures it binds: the one searched for that device, or (searched for
    all devices) every one."""
    rows = []
    for d, label in enumerate(labels):
        if d not in budgets:
            continue
        for i, name in enumerate(names):
            if name in own and own[name] != d:
                continue
            rows.append({"device": label, "architecture": name, "budget_ms": budgets[d],
                         "predicted_ms": round(predicted[d][i], 4), "measured_ms": round(measured[d][i], 4),
                         "within_predicted": predicted[d][i] <= budgets[d],
                         "within_measured": measured[d][i] <= budgets[d]})  # fmt: skip
    return rows
