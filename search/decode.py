"""From theta to architectures: the most likely one, samples from P_theta, and the most likely one that meets a
latency target (a budget by default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from search.cost import network_cost
from search.latency import LatencyLUT
from search.space import SearchSpace


def most_likely(theta: torch.Tensor) -> list[int]:
    return theta.argmax(dim=-1).tolist()


def sample(theta: torch.Tensor, k: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(theta, dim=-1)
    return [torch.multinomial(probs, 1, generator=g).squeeze(-1).tolist() for _ in range(k)]


@dataclass(frozen=True)
class TargetDecode:
    """The architecture decoded for a latency target, and whether it meets it (said, never implied)."""

    arch: list[int]
    met: bool
    fastest_us: float  # the fastest network the space offers, on this table
    slowest_us: float
    label: str


def _swap(theta_logp: torch.Tensor, lut: LatencyLUT, arch: list[int], allowed) -> tuple[int, int] | None:  # type: ignore[no-untyped-def]
    """The single-layer swap with the least log-probability lost per microsecond moved, among `allowed`
    (a predicate on the latency change); None when no swap is allowed."""
    best, best_score = None, float("inf")
    for layer, current in enumerate(arch):
        for k in range(lut.table.shape[1]):
            delta = float(lut.table[layer, k] - lut.table[layer, current])
            if k == current or not allowed(delta):
                continue
            score = float(theta_logp[layer, current] - theta_logp[layer, k]) / abs(delta)
            if score < best_score:
                best, best_score = (layer, k), score
    return best


def decode_target(theta: torch.Tensor, lut: LatencyLUT, target_us: float, mode: str = "at_most",
                  tolerance: float = 0.10) -> TargetDecode:  # fmt: skip
    """A latency target is a budget by default (`at_most`): keep the most likely architecture if it is
    predicted within T (never slow it down); otherwise make the cheapest swaps, in log-probability per
    microsecond saved, until it fits, then take back any swap that still fits for more probability. `band`
    aims for T +- tolerance from either side. When no network of the space can meet the target, the closest
    one is returned and labelled as missing it."""
    theta, table = theta.detach().cpu(), lut.table.detach().cpu()
    lut = LatencyLUT(table, lut.fixed_us)
    logp = torch.log_softmax(theta, dim=-1)
    arch = most_likely(theta)
    fastest = lut.of_arch(table.argmin(1).tolist())
    slowest = lut.of_arch(table.argmax(1).tolist())
    limit = theta.numel() * 4
    if mode == "at_most":
        for _ in range(limit):
            if lut.of_arch(arch) <= target_us:
                break
            best = _swap(logp, lut, arch, lambda d: d < 0)
            if best is None:
                break
            arch[best[0]] = best[1]
        for _ in range(limit):  # give back probability where the budget allows
            lat = lut.of_arch(arch)
            if lat > target_us:
                break
            gains = [
                (float(logp[layer, k] - logp[layer, cur]), layer, k)
                for layer, cur in enumerate(arch)
                for k in range(table.shape[1])
                if lat + float(table[layer, k] - table[layer, cur]) <= target_us
            ]
            gain, layer, k = max(gains, default=(0.0, -1, -1))
            if gain <= 1e-9:
                break
            arch[layer] = k
        lat = lut.of_arch(arch)
        met = lat <= target_us
        label = (f"at most {target_us / 1e3:.4g} ms" if met else
                 f"fastest network of the space ({fastest / 1e3:.4g} ms): the budget {target_us / 1e3:.4g} ms "
                 "cannot be met")  # fmt: skip
        return TargetDecode(arch, met, fastest, slowest, label)
    if mode != "band":
        raise ValueError(f"target mode must be at_most or band, not {mode!r}")
    lo, hi = target_us * (1 - tolerance), target_us * (1 + tolerance)
    for _ in range(limit):
        lat = lut.of_arch(arch)
        if lo <= lat <= hi:
            break
        if lat > hi:  # faster, but not below the band's floor
            best = _swap(logp, lut, arch, lambda d, lat=lat: d < 0 and lat + d >= lo)
            best = best or _swap(logp, lut, arch, lambda d: d < 0)
        else:
            best = _swap(logp, lut, arch, lambda d, lat=lat: d > 0 and lat + d <= hi)
            best = best or _swap(logp, lut, arch, lambda d: d > 0)
        if best is None:
            break
        arch[best[0]] = best[1]
    lat = lut.of_arch(arch)
    met = lo <= lat <= hi
    label = (f"within {tolerance:.0%} of {target_us / 1e3:.4g} ms" if met else
             f"closest network found ({lat / 1e3:.4g} ms): the space's range {fastest / 1e3:.4g}-"
             f"{slowest / 1e3:.4g} ms misses the band {lo / 1e3:.4g}-{hi / 1e3:.4g} ms")  # fmt: skip
    return TargetDecode(arch, met, fastest, slowest, label)


def describe(space: SearchSpace, lut: LatencyLUT, theta: torch.Tensor, indices: list[int]) -> dict[str, Any]:
    names = [space.candidates[k] for k in indices]
    cost = network_cost(space, names)
    logp = torch.log_softmax(theta, dim=-1)
    return {
        "arch": names,
        "predicted_latency_ms": round(lut.of_arch(indices) / 1e3, 4),
        "flops": cost.macs,
        "params": cost.params,
        "log_prob": round(float(sum(logp[layer, k] for layer, k in enumerate(indices))), 4),
    }
