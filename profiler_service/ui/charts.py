"""Chart geometry for the pages' inline SVG, computed here so the pictures need no script and no library:
the latency heatmap (layers x candidates), the fidelity scatter (predicted against measured) and the compare
page's ratio map (layers x block families, B over A)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# A sequential palette (light yellow -> dark red), interpolated in RGB: cheap cells are pale, dear ones dark.
PALETTE = ((255, 247, 188), (254, 196, 79), (236, 112, 20), (204, 76, 2), (140, 45, 4))


def colour(t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(PALETTE) - 1)
    i = min(int(t), len(PALETTE) - 2)
    f = t - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(PALETTE[i], PALETTE[i + 1], strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def ink(t: float) -> str:
    """Text colour that stays readable on the cell (WCAG contrast on the palette's two halves)."""
    return "#ffffff" if t > 0.55 else "#1a1a1a"


@dataclass(frozen=True)
class HeatCell:
    x: float
    y: float
    value_us: float
    key: str
    fill: str
    text: str
    fastest: bool


HEAT_CELL_W, HEAT_CELL_H, HEAT_LABEL_W, HEAT_HEAD_H = 76, 24, 170, 30


def heatmap(values: Sequence[Sequence[float]], keys: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Cells coloured on one log scale over the whole table (where the time goes); each layer's cheapest
    candidate is outlined (what the latency term pulls the search towards)."""
    flat = [v for row in values for v in row]
    floor = max(min((v for v in flat if v > 0), default=1.0), 0.1)
    lo, hi = math.log(floor), math.log(max(max(flat, default=1.0), floor * 1.0001))
    cells = []
    for layer, row in enumerate(values):
        cheapest = min(row) if row else 0.0
        for k, v in enumerate(row):
            t = (math.log(max(v, floor)) - lo) / (hi - lo)
            cells.append(
                HeatCell(
                    x=HEAT_LABEL_W + k * HEAT_CELL_W,
                    y=HEAT_HEAD_H + layer * HEAT_CELL_H,
                    value_us=v,
                    key=keys[layer][k],
                    fill=colour(t),
                    text=ink(t),
                    fastest=v == cheapest,
                )
            )
    columns = len(values[0]) if values else 0
    legend = [{"t": t, "fill": colour(t), "us": math.exp(lo + t * (hi - lo))} for t in (0, 0.25, 0.5, 0.75, 1)]
    return {
        "cells": cells,
        "width": HEAT_LABEL_W + columns * HEAT_CELL_W,
        "height": HEAT_HEAD_H + len(values) * HEAT_CELL_H + 4,
        "cell_w": HEAT_CELL_W,
        "cell_h": HEAT_CELL_H,
        "label_w": HEAT_LABEL_W,
        "head_h": HEAT_HEAD_H,
        "legend": legend,
    }


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    step = 10 ** math.floor(math.log10(span / n))
    for mult in (1, 2, 2.5, 5, 10):
        if span / (step * mult) <= n:
            step *= mult
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


SCATTER_SIZE, SCATTER_MARGIN = 440, 56


def scatter(points: Sequence[dict[str, Any]], band: float = 0.05) -> dict[str, Any] | None:
    """Predicted (y) against measured (x) on equal axes, with the y = x line and a +-band shading. Each point
    is {"measured_us", "predicted_us", "label"}; milliseconds once the networks take more than 2 ms."""
    pts = [p for p in points if p["measured_us"] > 0]
    if not pts:
        return None
    values = [p["measured_us"] for p in pts] + [p["predicted_us"] for p in pts]
    ms = max(values) > 2000
    unit, scale = ("ms", 1e-3) if ms else ("us", 1.0)
    lo, hi = min(values) * scale * 0.93, max(values) * scale * 1.07
    if hi - lo < 1e-9:
        lo, hi = lo * 0.9, hi * 1.1 + 1e-9
    inner = SCATTER_SIZE - 2 * SCATTER_MARGIN

    def px(v: float) -> float:
        return SCATTER_MARGIN + (v - lo) / (hi - lo) * inner

    def py(v: float) -> float:
        return SCATTER_SIZE - SCATTER_MARGIN - (v - lo) / (hi - lo) * inner

    band_poly = " ".join(
        f"{px(x):.1f},{py(y):.1f}"
        for x, y in ((lo, lo * (1 - band)), (hi, hi * (1 - band)), (hi, hi * (1 + band)), (lo, lo * (1 + band)))
    )
    dots = []
    for p in pts:
        m, pred = p["measured_us"] * scale, p["predicted_us"] * scale
        err = (p["predicted_us"] - p["measured_us"]) / p["measured_us"] * 100
        dots.append(
            {
                "cx": px(m),
                "cy": py(pred),
                "outside": abs(err) > band * 100,
                "title": f"{p.get('label', '')}: measured {m:.3f} {unit}, predicted {pred:.3f} {unit} ({err:+.1f}%)",
            }
        )
    ticks = [{"v": t, "x": px(t), "y": py(t), "label": f"{t:g}"} for t in _nice_ticks(lo, hi)]
    return {
        "size": SCATTER_SIZE,
        "margin": SCATTER_MARGIN,
        "unit": unit,
        "diag": (px(lo), py(lo), px(hi), py(hi)),
        "band": band_poly,
        "band_pct": round(band * 100),
        "dots": dots,
        "ticks": ticks,
        "plot_lo": SCATTER_MARGIN,
        "plot_hi": SCATTER_SIZE - SCATTER_MARGIN,
    }


# A diverging palette around 1: blue where B is faster than A, white where they agree, red where B is slower.
DIVERGING = ((33, 102, 172), (146, 197, 222), (247, 247, 247), (244, 165, 130), (178, 24, 43))


def diverging(t: float) -> str:
    """t in [-1, 1]: -1 the most faster in B, 0 no change, 1 the most slower."""
    t = (min(max(t, -1.0), 1.0) + 1) / 2 * (len(DIVERGING) - 1)
    i = min(int(t), len(DIVERGING) - 2)
    f = t - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(DIVERGING[i], DIVERGING[i + 1], strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def diverging_ink(t: float) -> str:
    """White only on the two dark ends of the diverging palette."""
    return "#ffffff" if abs(t) > 0.75 else "#1a1a1a"


@dataclass(frozen=True)
class RatioCell:
    x: float
    y: float
    ratio: float | None
    fill: str
    text: str
    title: str


def ratio_grid(grid: dict[str, Any], a_name: str, b_name: str) -> dict[str, Any]:
    """`profiler_service.compare.by_layer` as cells: layers x block families, then a row of each family's
    median over layers. One log2 colour scale, symmetric about 1, so x2 and x0.5 are equally strong."""
    rows = [(layer["label"], layer["cells"]) for layer in grid["layers"]]
    logs = [abs(math.log2(c["ratio"])) for _, cells in rows for c in cells if c and c["ratio"]]
    limit = max(max(logs, default=1.0), 0.1)
    cells = []
    for i, (label, row) in enumerate(rows):
        for j, c in enumerate(row):
            candidate = grid["candidates"][j]
            if c is None or not c["ratio"]:
                why = "not in both tables" if c is None else "priced 0 in one table"
                cells.append(RatioCell(HEAT_LABEL_W + j * HEAT_CELL_W, HEAT_HEAD_H + i * HEAT_CELL_H, None,
                                       "#e3e8ee", "#1a1a1a", f"layer {label}, {candidate}: {why}"))  # fmt: skip
                continue
            t = math.log2(c["ratio"]) / limit
            title = (f"layer {label}, {candidate}: {a_name} {c['a_us']:.2f} us, {b_name} {c['b_us']:.2f} us, "
                     f"{b_name}/{a_name} {c['ratio']:.3f}")  # fmt: skip
            cells.append(RatioCell(HEAT_LABEL_W + j * HEAT_CELL_W, HEAT_HEAD_H + i * HEAT_CELL_H, c["ratio"],
                                   diverging(t), diverging_ink(t), title))  # fmt: skip
    median_y = HEAT_HEAD_H + len(rows) * HEAT_CELL_H + 8
    medians = []
    for j, f in enumerate(grid["families"]):
        ratio = f["median_ratio"]
        t = math.log2(ratio) / limit if ratio else 0.0
        title = (f"{f['candidate']}: median {b_name}/{a_name} {ratio:.3f} over {f['layers']} layers" if ratio
                 else f"{f['candidate']}: no layer priced in both")  # fmt: skip
        medians.append(RatioCell(HEAT_LABEL_W + j * HEAT_CELL_W, median_y, ratio,
                                 diverging(t) if ratio else "#e3e8ee", diverging_ink(t), title))  # fmt: skip
    legend = [{"ratio": 2 ** (t * limit), "fill": diverging(t)} for t in (-1, -0.5, 0, 0.5, 1)]
    return {
        "cells": cells,
        "medians": medians,
        "median_y": median_y,
        "rows": [label for label, _ in rows],
        "candidates": grid["candidates"],
        "width": HEAT_LABEL_W + len(grid["candidates"]) * HEAT_CELL_W,
        "height": median_y + HEAT_CELL_H + 4,
        "cell_w": HEAT_CELL_W,
        "cell_h": HEAT_CELL_H,
        "label_w": HEAT_LABEL_W,
        "head_h": HEAT_HEAD_H,
        "legend": legend,
    }
