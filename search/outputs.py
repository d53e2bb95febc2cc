"""What a search leaves behind: architectures as JSON (timm-style strings) and ONNX, theta as a picture,
each stamped with the latency table it was searched against."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from search.config import SearchConfig
from search.decode import decode_target, describe, most_likely, sample
from search.export import atomic_write, export_network
from search.latency import LatencyLUT, LatencyTable
from search.model import build_model
from search.supernet import SuperNet
from search.trainer import theta_png

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
        found = decode_target(theta, lut, cfg.target_latency_ms * 1e3, cfg.target_mode, cfg.target_tolerance)
        docs["target"] = arch_document(net, lut, found.arch, table, found.label, data)
        target = {"latency_ms": cfg.target_latency_ms, "mode": cfg.target_mode, "met": found.met,
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
