"""Several devices at once: names for their tables, and the cross-device cost matrix (architectures x devices)
as data and as a picture.

The paper's Fig. 5 / Table 5 point: the same operator costs very different amounts on different devices, so
a network searched for one device runs slower on another. The matrix shows it for the networks a search
returned: each row an architecture, each column a device, each cell its latency there (predicted by that
device's table, and measured when `dnas validate` has measured it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search.tables.latency import LatencyLUT
from search.tables.schema import PublishedTable


def device_labels(tables: Sequence[PublishedTable]) -> list[str]:
    """A short, unique name per table: the device's name, with its id or the table's position when two
    tables share a name (two tables of one device are also told apart by version)."""
    base = []
    for i, table in enumerate(tables):
        device = table.device_info
        name = str(device.get("name") or f"table{i}")
        suffix = "" if table.precision == "fp32" or name.endswith(f"-{table.precision}") else f"-{table.precision}"
        base.append(name + suffix)  # one device measured at two precisions is two targets
    labels = []
    for i, (table, name) in enumerate(zip(tables, base, strict=True)):
        if base.count(name) == 1:
            labels.append(name)
            continue
        device = table.device_info
        same_id = [t for t, n in zip(tables, base, strict=True) if n == name
                   and t.device_info.get("id") == device.get("id")]  # fmt: skip
        if device.get("id") is not None and len(same_id) == 1:
            labels.append(f"{name}#{device['id']}")
        else:
            labels.append(f"{name}[{i}]")
    return labels


def slug(label: str) -> str:
    """A directory name for a device label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "device"


def cost_matrix(archs: dict[str, list[int]], luts: Sequence[LatencyLUT], labels: Sequence[str]) -> dict[str, Any]:
    """Predicted milliseconds of every architecture (by LUT indices) on every device, rows x columns."""
    return {
        "devices": list(labels),
        "architectures": list(archs),
        "predicted_ms": [[round(lut.of_arch(idx) / 1e3, 4) for lut in luts] for idx in archs.values()],
    }


def matrix_png(path: Path, matrix: dict[str, Any], title: str, own: dict[str, int] | None = None) -> None:
    """The matrix as a heatmap. Each column is coloured relative to its fastest cell, so what matters (how
    much slower a network is on a device than the one searched for it) reads at a glance; with `own`
    (architecture -> its device's column) those cells are outlined. With a `measured_ms` matrix each cell
    shows predicted / measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pred = np.array(matrix["predicted_ms"], dtype=float)
    measured = np.array(matrix["measured_ms"], dtype=float) if matrix.get("measured_ms") is not None else None
    shown = measured if measured is not None else pred
    relative = shown / shown.min(axis=0, keepdims=True)
    rows, cols = pred.shape
    fig, ax = plt.subplots(figsize=(2.2 + 2.1 * cols, 1.4 + 0.6 * rows))
    im = ax.imshow(relative, cmap="Reds", vmin=1.0, vmax=max(1.3, float(relative.max())), aspect="auto")
    for i in range(rows):
        for j in range(cols):
            text = f"{pred[i, j]:.3f} ms"
            if measured is not None:
                text = f"pred {pred[i, j]:.3f}\nmeas {measured[i, j]:.3f} ms"
            text += f"\n{relative[i, j] - 1:+.0%}" if relative[i, j] > 1.0005 else "\nfastest"
            ax.text(j, i, text, ha="center", va="center", fontsize=8)
    for name, j in (own or {}).items():
        i = matrix["architectures"].index(name)
        ax.add_patch(plt.Rectangle((j - 0.45, i - 0.42), 0.9, 0.84, fill=False, lw=2.5, ec="#1a7"))
    ax.set_xticks(range(cols), matrix["devices"])
    ax.set_yticks(range(rows), matrix["architectures"])
    ax.set_xlabel("device" + (" (colour: measured, relative to the column's fastest)" if measured is not None
                              else " (colour: relative to the column's fastest)"))  # fmt: skip
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, label="x fastest in column")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
