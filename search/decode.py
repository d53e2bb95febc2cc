"""From theta to architectures: the most likely one, samples from P_theta, and the most likely one within a
latency target."""

from __future__ import annotations

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


def decode_within(theta: torch.Tensor, lut: LatencyLUT, target_us: float, tolerance: float) -> list[int]:
    """Start at the most likely architecture; while its predicted latency is outside target +- tolerance,
    make the single-layer swap that costs the least log-probability per microsecond moved toward the target.
    Stops when inside, or when no swap helps (the target is out of the space's reach)."""
    logp = torch.log_softmax(theta, dim=-1)
    arch = most_likely(theta)
    lo, hi = target_us * (1 - tolerance), target_us * (1 + tolerance)
    for _ in range(theta.numel()):
        lat = lut.of_arch(arch)
        if lo <= lat <= hi:
            break
        need = (lat - target_us) if lat > hi else (target_us - lat)
        best, best_score = None, float("inf")
        for layer, current in enumerate(arch):
            for k in range(theta.shape[1]):
                delta = float(lut.table[layer, k] - lut.table[layer, current])
                moved = -delta if lat > hi else delta
                if moved <= 0 or moved > need + target_us * tolerance:
                    continue
                score = float(logp[layer, current] - logp[layer, k]) / moved
                if score < best_score:
                    best, best_score = (layer, k), score
        if best is None:
            break
        arch[best[0]] = best[1]
    return arch


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
