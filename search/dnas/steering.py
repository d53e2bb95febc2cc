"""beta, the exponent of eq. 2's latency factor: steered per device toward its latency budget, and spread
over the samples of a batch as the exponent each sample's loss is priced with.

One beta per device, always a list (one device: a list of one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def steer_betas(betas: Sequence[float], expected_us: Sequence[float], targets_us: Sequence[float | None],
                beta_range: tuple[float, float], gain: float) -> list[float]:  # fmt: skip
    """Toward --target-latency-ms: raise beta while the expected latency is above the target, lower it while
    below, by (E[LAT] / target) ** gain per epoch, within beta_range. Each device's beta follows its own
    expected latency and target; a device without a target keeps its beta."""
    lo, hi = beta_range
    out = list(betas)
    for d, target in enumerate(targets_us):
        if target is None:
            continue
        ratio = expected_us[d] / target
        out[d] = min(hi, max(lo, max(out[d], 0.05) * ratio**gain))
    return out


def loss_exponents(betas: Sequence[float], rows: torch.Tensor | None, device: torch.device) -> float | torch.Tensor:
    """beta of eq. 2, per sample and device: one table, its beta; a per-device search, the beta of the
    device sample b is priced for (`rows[b]`) and 0 elsewhere (that device's factor is exactly 1);
    all-devices, every device's beta."""
    if len(betas) == 1:
        return betas[0]
    tensor = torch.tensor(list(betas), dtype=torch.float32, device=device)
    if rows is None:
        return tensor
    return torch.nn.functional.one_hot(rows, len(betas)).float() * tensor[rows].unsqueeze(1)


def sample_rows(batch: int, devices: int, per_device: bool, device: torch.device) -> torch.Tensor | None:
    """Which device's theta draws each sample's network: per device in turn (per-device search), else None."""
    if not per_device:
        return None
    return torch.arange(batch, device=device) % devices
