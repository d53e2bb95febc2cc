"""What a search leaves behind: architectures as JSON (timm-style strings) and ONNX, theta as a picture, and
search.json, each stamped with the latency tables it was searched against.

One writer for one device and for several (one device is a list of one). The layout:
- one theta (one device, or an all-devices search): most_likely, target (with a budget) and samples at the
  top of the output folder, with theta.png;
- a theta per device (a per-device search of several): the same files in a folder per device.

search.json has one schema. Always: `device_mode`, `devices` (label, table, budget, expected latency, theta's
confidence, folder), `chosen`, `target`, `architectures`, `cost_matrix` (architectures x devices),
`latency_tables`, `data`, `config`, `events`, `compute`. `chosen` is one architecture (with its `file`), or
one per device label in a per-device search; `target` is the budget's outcome (per device label in a
per-device search; budgets by label in an all-devices search). A one-device search also keeps the keys it has
always had: `chosen_file`, `expected_latency_ms`, `theta_max_prob_mean` and `latency_table`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from search.dnas.config import SearchConfig
from search.dnas.decode import decode_budgets, decode_target, describe, most_likely, sample
from search.dnas.supernet import SuperNet
from search.space.export import atomic_write, export_network
from search.space.macro import SearchSpace
from search.space.model import build_model
from search.tables.device_matrix import cost_matrix, matrix_png, slug
from search.tables.latency import LatencyLUT
from search.tables.schema import PublishedTable

log = logging.getLogger("dnas.search")
SUMMARY_KEYS = ("predicted_latency_ms", "predicted_latency_ms_by_device", "flops", "params")


def arch_document(space: SearchSpace, theta: torch.Tensor, luts: list[LatencyLUT], tables: list[PublishedTable],
                  labels: list[str], indices: list[int], kind: str, data: dict[str, Any] | None,
                  own: int | None) -> dict[str, Any]:  # fmt: skip
    """One architecture, with what it was searched against: the tables and the data split (`dnas train`
    rebuilds that split, so it never evaluates on images the search trained on). Searched for device `own`
    (one device, or its own theta in a per-device search) or for all of them (None, all-devices): its
    predicted latency on every device either way."""
    doc = {"kind": kind, **describe(space, luts[own if own is not None else 0], theta, indices)}
    if own is None:
        del doc["predicted_latency_ms"]  # one number would hide the others: see predicted_latency_ms_by_device
    doc["searched_for"] = labels[own] if own is not None else "all devices"
    doc["predicted_latency_ms_by_device"] = {lab: round(lut.of_arch(indices) / 1e3, 4)
                                             for lab, lut in zip(labels, luts, strict=True)}  # fmt: skip
    doc["space"] = space.to_dict()
    if own is not None:
        doc["latency_table"] = tables[own].provenance
    doc["latency_tables"] = [t.provenance | {"label": lab} for t, lab in zip(tables, labels, strict=True)]
    doc["data"] = data or {}
    return doc


def _write_architectures(out: Path, space: SearchSpace, docs: dict[str, dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        (out / f"{name}.json").write_text(json.dumps(doc, indent=2))
        model = build_model(space, doc["arch"])
        atomic_write(
            out / f"{name}.onnx", export_network(model, (1, space.in_channels, space.resolution, space.resolution))
        )


def _one_budget(found: Any, budget_us: float, cfg: SearchConfig) -> dict[str, Any]:
    """The outcome of one device's budget (decode_target)."""
    target = {"latency_ms": budget_us / 1e3, "mode": cfg.target_mode, "met": found.met,
              "fastest_in_space_ms": round(found.fastest_us / 1e3, 4),
              "slowest_in_space_ms": round(found.slowest_us / 1e3, 4), "label": found.label}  # fmt: skip
    if cfg.target_mode == "band":
        target["tolerance"] = cfg.target_tolerance
    return target


def _every_budget(found: Any, budgets: list[float | None], labels: list[str]) -> dict[str, Any]:
    """The outcome of every device's budget for one architecture (decode_budgets, all-devices)."""
    return {
        "mode": "at_most",
        "budgets_ms": {lab: None if b is None else b / 1e3 for lab, b in zip(labels, budgets, strict=True)},
        "met": dict(zip(labels, found.met, strict=True)),
        "all_met": found.all_met,
        "fastest_in_space_ms": {lab: round(f / 1e3, 4) for lab, f in zip(labels, found.fastest_us, strict=True)},
        "label": found.label,
    }


def write_outputs(
    net: SuperNet,
    luts: list[LatencyLUT],
    tables: list[PublishedTable],
    labels: list[str],
    cfg: SearchConfig,
    out: Path,
    data: dict[str, Any] | None = None,
    events: list[dict[str, Any]] | None = None,
    compute: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write every architecture, theta.png, cost_matrix.png (several devices) and search.json; return the
    summary. One LUT, table and label per device, in the same order (one device: lists of one)."""
    space = net.space
    luts = [LatencyLUT(lut.table.detach().cpu(), lut.fixed_us) for lut in luts]
    n = len(luts)
    budgets = cfg.targets_us(n)
    per_device = n > 1 and cfg.device_mode == "per-device"
    devices: list[dict[str, Any]] = []
    for d, (label, table) in enumerate(zip(labels, tables, strict=True)):
        probs = torch.softmax(net.theta_of(d if per_device else 0).detach().cpu(), dim=-1)
        devices.append({
            "label": label,
            "latency_table": table.provenance,
            "target_latency_ms": None if budgets[d] is None else budgets[d] / 1e3,
            "expected_latency_ms": net.expected_latency_us(d) / 1e3,
            # How far the search got from uniform (1/K per layer): did it learn, or is the result a coin toss?
            "theta_max_prob_mean": float(probs.max(dim=-1).values.mean()),
        })  # fmt: skip
    # A theta and the folder its architectures go to: one per device (per-device), else the one at the top.
    groups = [(d, slug(label), d) for d, label in enumerate(labels)] if per_device else [(0, "", 0 if n == 1 else None)]
    chosen: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    architectures: dict[str, Any] = {}
    rows: dict[str, list[int]] = {}  # the cost matrix's architectures
    own_rows: dict[str, int] = {}
    for index, folder, own in groups:
        theta = net.theta_of(index).detach().cpu()

        def document(indices: list[int], kind: str, theta: torch.Tensor = theta, own: int | None = own) -> dict:
            return arch_document(space, theta, luts, tables, labels, indices, kind, data, own)

        docs = {"most_likely": document(most_likely(theta), "most_likely")}
        target: dict[str, Any] | None = None
        if own is not None and budgets[own] is not None:
            found = decode_target(theta, luts[own], budgets[own], cfg.target_mode, cfg.target_tolerance)
            docs["target"] = document(found.arch, found.label)
            target = _one_budget(found, budgets[own], cfg)
            if not found.met:
                log.warning("latency target not met%s: %s", f" on {labels[own]}" if n > 1 else "", found.label)
        elif own is None and any(b is not None for b in budgets):
            found_all = decode_budgets(theta, luts, budgets, labels)
            docs["target"] = document(found_all.arch, found_all.label)
            target = _every_budget(found_all, budgets, labels)
            if not found_all.all_met:
                log.warning("not every budget met: %s", found_all.label)
        if target is not None:
            docs["target"]["target"] = target
        for i, idx in enumerate(sample(theta, cfg.samples, seed=cfg.seed)):
            docs[f"sample_{i}"] = document(idx, "sample from P_theta")
        _write_architectures(out / folder, space, docs)
        if own is not None:
            title = f"P(theta) per layer for {labels[own]}, table v{table_version(tables[own])}"
        else:
            title = "P(theta) per layer, priced on " + ", ".join(labels)
        theta_png(net, out / folder / "theta.png", title, index=index)
        name = "target" if "target" in docs else "most_likely"
        best = docs[name]
        pick = {k: best[k] for k in ("arch", *SUMMARY_KEYS) if k in best}
        pick["file"] = f"{folder}/{name}.json" if folder else f"{name}.json"
        entries = {n_: {k: d[k] for k in SUMMARY_KEYS if k in d} for n_, d in docs.items()}
        best_indices = [space.candidates.index(c) for c in best["arch"]]
        if per_device:
            assert own is not None
            label = labels[own]
            devices[own]["folder"] = folder
            chosen[label], architectures[label] = pick, entries
            if target is not None:
                targets[label] = target
            rows[f"for {label}"], own_rows[f"for {label}"] = best_indices, own
        else:
            chosen, architectures, targets = pick, entries, target or {}
            rows["most likely"] = most_likely(theta)
            if target is not None:
                met = target["all_met"] if own is None else target["met"]
                which = "every budget" if own is None else "the budget"
                rows[("within " if met else "closest to ") + which] = best_indices
    matrix = cost_matrix(rows, luts, labels)
    if n > 1:
        title = ("per-device search: each device's architecture (outlined) on every device, predicted" if per_device
                 else "all-devices search: predicted latency on every device")  # fmt: skip
        matrix_png(out / "cost_matrix.png", matrix, title, own_rows if per_device else None)
    summary: dict[str, Any] = {
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
    if n == 1:  # what a one-device search.json has always held, for the readers of those keys
        summary |= {
            "chosen_file": chosen["file"],
            "expected_latency_ms": devices[0]["expected_latency_ms"],
            "theta_max_prob_mean": devices[0]["theta_max_prob_mean"],
            "latency_table": tables[0].provenance,
        }
    (out / "search.json").write_text(json.dumps(summary, indent=2))
    return summary


def table_version(table: PublishedTable) -> Any:
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
