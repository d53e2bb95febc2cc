"""What a search reports while it runs: the running sums of a phase, the row of metrics.jsonl each epoch
ends with, and the same row as TensorBoard scalars (as timm's `summary` sits beside its trainer).

Per-device values are lists in the tables' order. A one-device search writes them as plain numbers, the
shape metrics.jsonl has always had (`one_device_row`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from search.dnas.config import SearchConfig
from search.dnas.supernet import SuperNet

# The keys whose value is one number per device (a list), written as a number when there is one device.
PER_DEVICE_KEYS = ("beta", "sampled_latency_ms", "expected_latency_ms")


def batch_stats(loss: torch.Tensor, ce: torch.Tensor, latency: torch.Tensor, logits: torch.Tensor,
                y: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """[B, 4 + D] per-sample values for the phase's running sums: loss, ce, latency on each device, correct, 1."""
    b = len(y)
    one = torch.ones(b, 1, dtype=torch.float64, device=loss.device)
    return torch.cat([loss.detach().double().reshape(b, 1), ce.detach().double().reshape(b, 1),
                      latency.detach().double().reshape(b, -1),
                      (logits.argmax(1) == y).double().reshape(b, 1), one], dim=1)  # fmt: skip


def phase_metrics(totals: list[list[float]]) -> list[dict[str, Any]]:
    """A phase's running sums (a row per group of samples) as its mean metrics per group."""
    out = []
    for row in totals:
        n = max(row[-1], 1.0)
        out.append({"loss": row[0] / n, "ce": row[1] / n, "latency_us": [v / n for v in row[2:-2]],
                    "acc": row[-2] / n, "n": row[-1]})  # fmt: skip
    return out


def phase_groups(partial: dict[str, Any], phase: str) -> list[dict[str, Any]] | None:
    """This epoch's metrics of a finished phase, per group (a checkpoint from before several devices held
    one dict with a scalar latency: read as one group)."""
    found = partial.get(phase)
    if found is None:
        return None
    if isinstance(found, dict):
        lat = found.get("latency_us", 0.0)
        return [found | {"latency_us": lat if isinstance(lat, list) else [lat], "n": 1.0}]
    return found


def _pooled(groups: list[dict[str, Any]] | None, key: str) -> float | None:
    if not groups:
        return None
    if len(groups) == 1:
        return groups[0][key]
    total = sum(g["n"] for g in groups)
    return sum(g[key] * g["n"] for g in groups) / total if total else 0.0


def epoch_row(*, epoch: int, tau: float, lr_w: float, betas: Sequence[float], partial: dict[str, Any],
              net: SuperNet, per_device: bool, val: dict[str, float] | None, theta_divergence: float,
              weight_divergence: float) -> dict[str, Any]:  # fmt: skip
    """metrics.jsonl's row, per-device values as lists in the tables' order: beta, expected and sampled
    latency always; theta's CE, accuracy and entropy in a per-device search."""
    n = len(betas)
    w, th = phase_groups(partial, "w"), phase_groups(partial, "theta")
    n_w = sum(g["n"] for g in w) if w else 0.0
    expected = [net.expected_latency_us(d) / 1e3 for d in range(n)]
    if not w or not n_w:
        sampled = [0.0] * n
    elif per_device:  # each device's latency over the samples drawn from its own theta
        sampled = [w[d]["latency_us"][d] / 1e3 for d in range(n)]
    else:
        sampled = [v / 1e3 for v in w[0]["latency_us"]]
    if per_device:
        ce_theta: Any = [g["ce"] for g in th] if th else None
        acc_theta: Any = [g["acc"] for g in th] if th else None
        entropy: Any = [net.entropy(d) for d in range(n)]
    else:
        ce_theta, acc_theta, entropy = _pooled(th, "ce"), _pooled(th, "acc"), net.entropy()
    return {
        "epoch": epoch + 1,
        "tau": tau,
        "beta": list(betas),
        "lr_w": lr_w,  # at the start of this epoch's weight phase
        "ce_w": _pooled(w, "ce"),
        "acc_w": _pooled(w, "acc"),
        "ce_theta": ce_theta,
        "acc_theta": acc_theta,
        "val_ce": val["ce"] if val else None,
        "val_acc": val["acc"] if val else None,
        "sampled_latency_ms": sampled,
        "expected_latency_ms": expected,
        "theta_entropy": entropy,
        "theta_rank_divergence": theta_divergence,
        "weight_rank_divergence": weight_divergence,
    }


def one_device_row(row: dict[str, Any]) -> dict[str, Any]:
    """A one-device search's row with its per-device lists of one as plain numbers (metrics.jsonl's shape)."""
    return row | {k: row[k][0] for k in PER_DEVICE_KEYS}


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class MetricsLog:
    """metrics.jsonl (one row per epoch) and, when asked, TensorBoard events; written by rank 0 only."""

    def __init__(self, out: Path, labels: Sequence[str], cfg: SearchConfig, main: bool) -> None:
        self.path, self.labels, self.cfg, self.main = out / "metrics.jsonl", list(labels), cfg, main
        self.tensorboard_dir = out / "tensorboard"
        self.writer: Any = None

    def rewrite(self, history: list[dict[str, Any]]) -> None:
        """After a resume: the checkpoint's history is the truth (no row twice, none lost)."""
        if self.main:
            _atomic_text(self.path, "".join(json.dumps(r) + "\n" for r in history))

    def open_tensorboard(self, epochs_done: int) -> None:
        if not (self.cfg.tensorboard and self.main):
            return
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run wrote after its last checkpoint, so curves have no doubles.
        self.writer = SummaryWriter(str(self.tensorboard_dir), purge_step=epochs_done + 1)
        if not epochs_done:
            self.writer.add_text("config", "```\n" + json.dumps(self.cfg.to_dict(), indent=2) + "\n```", 0)

    def append(self, row: dict[str, Any]) -> None:
        if not self.main:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and key != "epoch":
                    self.writer.add_scalar(key, value, row["epoch"])
                elif isinstance(value, list):  # one per device
                    for label, v in zip(self.labels, value, strict=False):
                        self.writer.add_scalar(f"{key}/{label}", v, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
