"""What a search leaves behind: architectures as JSON (timm-style strings) and ONNX, theta as a picture,
each stamped with the latency table it was searched against."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from search.dnas.config import SearchConfig
from search.dnas.decode import decode_target, describe, most_likely, sample
from search.dnas.supernet import SuperNet
from search.space.export import atomic_write, export_network
from search.space.model import build_model
from search.tables.latency import LatencyLUT, LatencyTable

log = logging.getLogger("dnas.search")


def arch_document(net: SuperNet, lut: LatencyLUT, indices: list[int], table: LatencyTable, kind: str,
                  data: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """One architecture, with what it was searched against: the table and the data split (`dnas train`
    rebuilds that split, so it never evaluates on images the search trained on)."""
    space = net.space
    return {
        "kind": kind,
        **describe(space, lut, net.theta.detach().cpu(), indices),
        "space": space.to_dict(),
        "latency_table": table.provenance,
        "data": data or {},
    }


def write_outputs(
    net: SuperNet,
    lut: LatencyLUT,
    table: LatencyTable,
    cfg: SearchConfig,
    out: Path,
    data: dict[str, Any] | None = None,
    events: list[dict[str, Any]] | None = None,
    compute: dict[str, Any] | None = None,
) -> dict[str, Any]:
    theta = net.theta.detach().cpu()
    lut = LatencyLUT(lut.table.detach().cpu(), lut.fixed_us)
    docs: dict[str, dict[str, Any]] = {
        "most_likely": arch_document(net, lut, most_likely(theta), table, "most_likely", data)
    }
    target: dict[str, Any] | None = None
    if cfg.target_latency_ms is not None:
        budget_ms = cfg.target_latency_ms[0]
        found = decode_target(theta, lut, budget_ms * 1e3, cfg.target_mode, cfg.target_tolerance)
        docs["target"] = arch_document(net, lut, found.arch, table, found.label, data)
        target = {"latency_ms": budget_ms, "mode": cfg.target_mode, "met": found.met,
                  "fastest_in_space_ms": round(found.fastest_us / 1e3, 4),
                  "slowest_in_space_ms": round(found.slowest_us / 1e3, 4), "label": found.label}  # fmt: skip
        if cfg.target_mode == "band":
            target["tolerance"] = cfg.target_tolerance
        docs["target"]["target"] = target
        if not found.met:
            log.warning("latency target not met: %s", found.label)
    for i, idx in enumerate(sample(theta, cfg.samples, seed=cfg.seed)):
        docs[f"sample_{i}"] = arch_document(net, lut, idx, table, "sample from P_theta", data)
    space = net.space
    for name, doc in docs.items():
        (out / f"{name}.json").write_text(json.dumps(doc, indent=2))
        model = build_model(space, doc["arch"])
        atomic_write(
            out / f"{name}.onnx", export_network(model, (1, space.in_channels, space.resolution, space.resolution))
        )
    device = table.provenance.get("device") or {}
    theta_png(
        net,
        out / "theta.png",
        f"P(theta) per layer: {device.get('name', 'device')}, table v{table.provenance.get('version')}",
    )
    best = docs.get("target", docs["most_likely"])
    summary = {
        "chosen": {k: best[k] for k in ("arch", "predicted_latency_ms", "flops", "params")},
        "chosen_file": "target.json" if "target" in docs else "most_likely.json",
        "architectures": {
            name: {k: d[k] for k in ("predicted_latency_ms", "flops", "params")} for name, d in docs.items()
        },
        "target": target,
        "expected_latency_ms": net.expected_latency_us() / 1e3,
        # How far the search got from uniform (1/K per layer): did it learn, or is the result a coin toss?
        "theta_max_prob_mean": float(torch.softmax(theta, dim=-1).max(dim=-1).values.mean()),
        "latency_table": table.provenance,
        "data": data or {},
        "config": cfg.to_dict(),
        "events": events or [],
        "compute": compute or {},
    }
    (out / "search.json").write_text(json.dumps(summary, indent=2))
    return summary


# ---- several devices ------------------------------------------------------------------------------------------
def _device_document(space: Any, theta: torch.Tensor, luts: list[LatencyLUT], tables: list[LatencyTable],
                     labels: list[str], indices: list[int], kind: str, data: dict[str, Any] | None,
                     own: int | None) -> dict[str, Any]:  # fmt: skip
    """One architecture of a several-device search: searched for device `own` (per-device) or for all
    (None); its predicted latency on every device, and every table's provenance."""
    doc = describe(space, luts[own if own is not None else 0], theta, indices)
    if own is None:
        del doc["predicted_latency_ms"]  # one number would hide the others: see predicted_latency_ms_by_device
    doc = {"kind": kind, **doc}
    doc["searched_for"] = labels[own] if own is not None else "all devices"
    doc["predicted_latency_ms_by_device"] = {lab: round(lut.of_arch(indices) / 1e3, 4)
                                             for lab, lut in zip(labels, luts, strict=True)}  # fmt: skip
    doc["space"] = space.to_dict()
    if own is not None:
        doc["latency_table"] = tables[own].provenance
    doc["latency_tables"] = [t.provenance | {"label": lab} for t, lab in zip(tables, labels, strict=True)]
    doc["data"] = data or {}
    return doc


def _write_architectures(out: Path, space: Any, docs: dict[str, dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        (out / f"{name}.json").write_text(json.dumps(doc, indent=2))
        model = build_model(space, doc["arch"])
        atomic_write(
            out / f"{name}.onnx", export_network(model, (1, space.in_channels, space.resolution, space.resolution))
        )


def write_device_outputs(
    net: SuperNet,
    luts: list[LatencyLUT],
    tables: list[LatencyTable],
    labels: list[str],
    cfg: SearchConfig,
    out: Path,
    data: dict[str, Any] | None = None,
    events: list[dict[str, Any]] | None = None,
    compute: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The outputs of a search over several devices' tables.

    per-device: a folder per device (most_likely, target with a budget, samples, theta.png), each
    architecture searched with that device's theta against its table. all-devices: the same files at the top,
    from the one theta, `target` within every budget (or naming the ones it cannot meet). Both: every
    architecture's predicted latency on every device, and `cost_matrix.png` (architectures x devices)."""
    from search.dnas.decode import decode_budgets
    from search.tables.device_matrix import cost_matrix, matrix_png, slug

    space = net.space
    luts = [LatencyLUT(lut.table.detach().cpu(), lut.fixed_us) for lut in luts]
    budgets = cfg.targets_us(len(luts))
    per_device = cfg.device_mode == "per-device"
    chosen: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    rows: dict[str, list[int]] = {}
    own: dict[str, int] = {}
    architectures: dict[str, Any] = {}
    devices = []
    for d, (label, table) in enumerate(zip(labels, tables, strict=True)):
        devices.append({
            "label": label,
            "latency_table": table.provenance,
            "target_latency_ms": None if budgets[d] is None else budgets[d] / 1e3,
            "expected_latency_ms": net.expected_latency_us(d) / 1e3,
        })  # fmt: skip
    if per_device:
        for d, label in enumerate(labels):
            theta = net.theta_of(d).detach().cpu()
            folder = slug(label)
            devices[d]["folder"] = folder
            docs = {"most_likely": _device_document(space, theta, luts, tables, labels, most_likely(theta),
                                                    "most_likely", data, d)}  # fmt: skip
            if budgets[d] is not None:
                found = decode_target(theta, luts[d], budgets[d], cfg.target_mode, cfg.target_tolerance)
                docs["target"] = _device_document(space, theta, luts, tables, labels, found.arch, found.label, data, d)
                targets[label] = {"latency_ms": budgets[d] / 1e3, "mode": cfg.target_mode, "met": found.met,
                                  "fastest_in_space_ms": round(found.fastest_us / 1e3, 4),
                                  "slowest_in_space_ms": round(found.slowest_us / 1e3, 4),
                                  "label": found.label}  # fmt: skip
                docs["target"]["target"] = targets[label]
                if not found.met:
                    log.warning("latency target not met on %s: %s", label, found.label)
            for i, idx in enumerate(sample(theta, cfg.samples, seed=cfg.seed)):
                docs[f"sample_{i}"] = _device_document(space, theta, luts, tables, labels, idx,
                                                       "sample from P_theta", data, d)  # fmt: skip
            _write_architectures(out / folder, space, docs)
            theta_png(net, out / folder / "theta.png", f"P(theta) per layer for {label}, table "
                      f"v{table_version(tables[d])}", index=d)  # fmt: skip
            name = "target" if "target" in docs else "most_likely"
            best = docs[name]
            chosen[label] = {k: best[k] for k in ("arch", "predicted_latency_ms", "predicted_latency_ms_by_device",
                                                  "flops", "params")} | {"file": f"{folder}/{name}.json"}  # fmt: skip
            architectures[label] = {n: {k: doc[k] for k in ("predicted_latency_ms_by_device", "flops", "params")}
                                    for n, doc in docs.items()}  # fmt: skip
            row = f"for {label}"
            rows[row] = [space.candidates.index(c) for c in best["arch"]]
            own[row] = d
    else:
        theta = net.theta_of(0).detach().cpu()
        docs = {"most_likely": _device_document(space, theta, luts, tables, labels, most_likely(theta),
                                                "most_likely", data, None)}  # fmt: skip
        rows["most likely"] = most_likely(theta)
        if any(b is not None for b in budgets):
            found = decode_budgets(theta, luts, budgets, labels)
            docs["target"] = _device_document(space, theta, luts, tables, labels, found.arch, found.label, data, None)
            targets = {
                "mode": "at_most",
                "budgets_ms": {lab: None if b is None else b / 1e3 for lab, b in zip(labels, budgets, strict=True)},
                "met": dict(zip(labels, found.met, strict=True)),
                "all_met": found.all_met,
                "fastest_in_space_ms": {
                    lab: round(f / 1e3, 4) for lab, f in zip(labels, found.fastest_us, strict=True)
                },
                "label": found.label,
            }
            docs["target"]["target"] = targets
            rows["within every budget" if found.all_met else "closest to every budget"] = found.arch
            if not found.all_met:
                log.warning("not every budget met: %s", found.label)
        for i, idx in enumerate(sample(theta, cfg.samples, seed=cfg.seed)):
            docs[f"sample_{i}"] = _device_document(space, theta, luts, tables, labels, idx, "sample from P_theta",
                                                   data, None)  # fmt: skip
        _write_architectures(out, space, docs)
        theta_png(net, out / "theta.png", "P(theta) per layer, priced on " + ", ".join(labels))
        name = "target" if "target" in docs else "most_likely"
        chosen = {k: docs[name][k] for k in ("arch", "predicted_latency_ms_by_device", "flops", "params")}
        chosen["file"] = f"{name}.json"
        architectures = {n: {k: doc[k] for k in ("predicted_latency_ms_by_device", "flops", "params")}
                         for n, doc in docs.items()}  # fmt: skip
    matrix = cost_matrix(rows, luts, labels)
    title = ("per-device search: each device's architecture (outlined) on every device, predicted" if per_device
             else "all-devices search: predicted latency on every device")  # fmt: skip
    matrix_png(out / "cost_matrix.png", matrix, title, own if per_device else None)
    summary = {
        "device_mode": cfg.device_mode,
        "devices": devices,
        "chosen": chosen,
        "target": targets or None,
        "cost_matrix": matrix,
        "architectures": architectures,
        "latency_tables": [t.provenance | {"label": lab} for t, lab in zip(tables, labels, strict=True)],
        "data": data or {},
        "config": cfg.to_dict(),
        "events": events or [],
        "compute": compute or {},
    }
    (out / "search.json").write_text(json.dumps(summary, indent=2))
    return summary


def table_version(table: LatencyTable) -> Any:
    return table.provenance.get("version")


def theta_png(net: SuperNet, path: Path, title: str = "", index: int = 0) -> None:
    """P_theta per layer as a heatmap: the picture of what the search chose (theta `index` of several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = net.probabilities(index).cpu().numpy()
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * probs.shape[1], 1.2 + 0.32 * probs.shape[0]))
    # Scaled to the largest probability: early in a search theta is near uniform and a 0..1 scale hides it.
    im = ax.imshow(probs, aspect="auto", cmap="viridis", vmin=0, vmax=float(probs.max()))
    ax.set_xticks(range(probs.shape[1]), net.space.candidates, rotation=45, ha="right")
    ax.set_yticks(range(probs.shape[0]), [f"layer {i}" for i in range(probs.shape[0])])
    for (i, j), p in __import__("numpy").ndenumerate(probs):
        if p >= 1.5 / probs.shape[1]:
            ax.text(
                j,
                i,
                f"{p:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if p > 0.6 * probs.max() else "white",
            )
    ax.set_title(title or "P(theta) per layer")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
