"""Chart geometry for the pages' inline SVG, computed here so the pictures need no script and no library:
the latency heatmap (layers x candidates) and the fidelity scatter (predicted against measured)."""

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
