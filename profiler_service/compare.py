"""Two tables side by side, the FBNet paper's Fig. 5: per op present in both, B's median over A's. One matcher
(`compare`) serves the API, `dnas table compare`, the dashboard's compare page and the PNG; `by_layer` only
lays its matched rows out as the search sees them (layers x block families), so an fp32-against-int8 view
of one device reads as "int8 costs 2x here, 0.5x there" per family and layer, not as a list of op keys."""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Callable
from typing import Any

from search.space.enumerate import enumerate_ops
from search.space.opspec import OpSpecError
from search.tables.schema import PublishedTable, TableError


def _op_of(key: str) -> str:
    """An op key without its dtype: the same op at fp32 and at int8 compares with itself."""
    return key.rsplit("-", 1)[0]


def _same(key: str) -> str:
    return key


def op_name(precision_a: str, precision_b: str) -> Callable[[str], str]:
    """How two tables' op keys are matched: as they are at one precision, less the dtype across two."""
    return _same if precision_a == precision_b else _op_of


def precision_of(table: dict[str, Any]) -> str:
    return table.get("config", {}).get("precision", "fp32")


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per shared op, b's median over a's, the ops that differ most first. Tables of two precisions (one
    device's fp32 and int8 tables) are matched op by op, their keys less the dtype."""
    pa, pb = precision_of(a), precision_of(b)
    name = op_name(pa, pb)
    am = {name(e["key"]): e["median_us"] for e in a["entries"]}
    bm = {name(e["key"]): e["median_us"] for e in b["entries"]}
    shared = sorted(set(am) & set(bm))
    # An op priced 0 (imported tables keep HW-NAS-Bench's zero-priced identities) has no ratio: listed last.
    rows = [{"key": k, "a_us": am[k], "b_us": bm[k], "ratio": bm[k] / am[k] if am[k] > 0 and bm[k] > 0 else None}
            for k in shared]  # fmt: skip
    rows.sort(key=lambda r: -abs(math.log(r["ratio"])) if r["ratio"] else math.inf)
    ratios = sorted(r["ratio"] for r in rows if r["ratio"])
    return {
        "a": {"device": a["device"], "version": a["version"], "content_sha256": a["content_sha256"], "precision": pa},
        "b": {"device": b["device"], "version": b["version"], "content_sha256": b["content_sha256"], "precision": pb},
        "shared_ops": len(shared),
        "only_in_a": sorted(set(am) - set(bm)),
        "only_in_b": sorted(set(bm) - set(am)),
        "median_ratio": ratios[len(ratios) // 2] if ratios else None,
        "ops": rows,
    }


def by_layer(result: dict[str, Any], a: dict[str, Any]) -> dict[str, Any] | None:
    """`compare`'s rows at the layers of A's space: one row per searchable layer, one column per candidate
    block, each cell the op that candidate is at that layer (None where B lacks it); then each family's median
    ratio over the layers, and the fixed layers every network pays (stem, head, pool, classifier). None when
    A's space cannot be read or no layer op is shared (two spaces: the per-op list still holds)."""
    try:
        table = PublishedTable.parse(a)
        space, dtype = table.space, table.dtype
    except (OpSpecError, TableError, KeyError, ValueError):
        return None
    name = op_name(result["a"]["precision"], result["b"]["precision"])
    rows = {r["key"]: r for r in result["ops"]}
    ops = enumerate_ops(space, dtype)
    layers = [
        {
            "index": slot.index,
            "label": f"{slot.index}: {slot.cin}→{slot.cout} s{slot.stride} {slot.h}px",
            "cells": [rows.get(name(key)) for key in keys],
        }
        for slot, keys in zip(space.slots, ops.layer_keys, strict=True)
    ]
    if not any(cell for layer in layers for cell in layer["cells"]):
        return None
    candidates = list(space.candidates)
    families = []
    for j, candidate in enumerate(candidates):
        ratios = [layer["cells"][j]["ratio"] for layer in layers if layer["cells"][j] and layer["cells"][j]["ratio"]]
        families.append({"candidate": candidate, "median_ratio": statistics.median(ratios) if ratios else None,
                         "layers": len(ratios)})  # fmt: skip
    fixed = [{"name": part, **rows[name(key)]} for part, key in ops.fixed_keys.items() if name(key) in rows]
    return {"candidates": candidates, "layers": layers, "families": families, "fixed": fixed}


def side_label(result: dict[str, Any], side: str) -> str:
    """'host v2 int8': which table a side is, with its precision (what a reader must not mix up)."""
    s = result[side]
    return f"{s['device'].get('name', s['device'].get('id'))} v{s['version']} {s.get('precision', 'fp32')}"


def ratio_label(result: dict[str, Any]) -> str:
    """What the ratio is, in the reader's terms: 'int8 / fp32' for one device's two precisions, else B / A."""
    a, b = result["a"], result["b"]
    if a["device"].get("id") == b["device"].get("id") and a["precision"] != b["precision"]:
        return f"{b['precision']} / {a['precision']}"
    return f"{side_label(result, 'b')} / {side_label(result, 'a')}"


def compare_png(result: dict[str, Any], top: int = 20, grid: dict[str, Any] | None = None) -> bytes:
    """The comparison as a picture for documents: with `grid` (`by_layer`), the layers x families ratio map
    beside the ops that differ most; without it, those ops alone. Log2 scale: x2 and x0.5 are as far from 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["ops"] if r["ratio"]][:top][::-1]
    height = max(3.0, 0.35 * len(rows) + 1.5)
    if grid:
        height = max(height, 0.32 * (len(grid["layers"]) + 2) + 2.0)
        fig, (gx, ax) = plt.subplots(1, 2, figsize=(17, height), gridspec_kw={"width_ratios": [1.15, 1]})
        _grid_axes(gx, grid, ratio_label(result))
    else:
        fig, ax = plt.subplots(figsize=(10, height))
    labels = [r["key"].split("-b")[0] for r in rows]
    ax.barh(labels, [math.log2(r["ratio"]) for r in rows], color=["#c44" if r["ratio"] > 1 else "#48c" for r in rows])
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"log2 latency ratio ({ratio_label(result)})")
    ax.set_title(f"Ops that differ most between {side_label(result, 'a')} and {side_label(result, 'b')}")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _grid_axes(ax: Any, grid: dict[str, Any], label: str) -> None:
    """Layers x families, each cell its ratio written and coloured (blue: faster in B, red: slower), the
    families' medians as a last row; the same picture the dashboard's compare page draws."""
    import numpy as np

    def cell_log(cell: dict[str, Any] | None) -> float:
        return math.log2(cell["ratio"]) if cell and cell["ratio"] else math.nan

    values = [[cell_log(c) for c in layer["cells"]] for layer in grid["layers"]]
    medians = [math.log2(f["median_ratio"]) if f["median_ratio"] else math.nan for f in grid["families"]]
    data = np.array([*values, medians])
    finite = np.abs(data[np.isfinite(data)])
    limit = max(float(finite.max()) if finite.size else 1.0, 0.1)
    ax.imshow(np.ma.masked_invalid(data), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            text = f"{2**v:.2f}" if math.isfinite(v) else "-"
            ink = "white" if abs(v) > 0.6 * limit else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=ink)
    ax.axhline(len(values) - 0.5, color="black", lw=1.5)
    ax.set_xticks(range(len(grid["candidates"])), grid["candidates"], rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(data)), [layer["label"] for layer in grid["layers"]] + ["median over layers"], fontsize=7)
    fixed = ", ".join(f"{f['name']} {f['ratio']:.2f}" for f in grid["fixed"] if f["ratio"])
    ax.set_title(f"{label} per layer and block family" + (f"\nfixed layers: {fixed}" if fixed else ""), fontsize=10)
