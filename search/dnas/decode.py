"""From theta to architectures: the most likely one, samples from P_theta, and the most likely one that meets a
latency target (a budget by default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from search.space.cost import network_cost
from search.space.macro import SearchSpace
from search.tables.latency import LatencyLUT


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


@dataclass(frozen=True)
class BudgetDecode:
    """One architecture decoded for a budget on each of several devices (an all-devices search): per device
    its predicted latency, whether it meets that device's budget (None: no budget), and the fastest network of
    the space on that device alone."""

    arch: list[int]
    latency_us: list[float]
    budgets_us: list[float | None]
    met: list[bool | None]
    fastest_us: list[float]
    label: str

    @property
    def all_met(self) -> bool:
        return all(m is not False for m in self.met)


def _excess(lats: list[float], budgets: list[float | None]) -> float:
    """How far over its budgets a network is: the sum of each device's relative overshoot (0 when within all)."""
    return sum(max(lat / b - 1.0, 0.0) for lat, b in zip(lats, budgets, strict=True) if b is not None)


def _best_move(arch: list[int], logp: torch.Tensor, tables: list[torch.Tensor], lats: list[float],
               budgets: list[float | None]) -> list[tuple[int, int]] | None:  # fmt: skip
    """The change of one layer, or else of two layers at once, that removes overshoot at the least
    log-probability lost per unit removed; None when no such change removes any. Two-layer changes get out of
    the dead ends of devices that disagree (a swap that helps one device hurts another by more)."""
    over = _excess(lats, budgets)
    if over <= 0:
        return None
    n_layers, n_cands = logp.shape
    cur = torch.tensor(arch)
    layer_of = torch.arange(n_layers).repeat_interleave(n_cands)
    lost = (logp.gather(1, cur.view(-1, 1)) - logp).reshape(-1)  # [M]: log-probability a move gives up
    delta = torch.stack([(t - t.gather(1, cur.view(-1, 1))).reshape(-1) for t in tables], dim=-1)  # [M, D]
    now = torch.tensor(lats, dtype=torch.float64)
    scale = torch.tensor([0.0 if b is None else 1.0 / b for b in budgets], dtype=torch.float64)
    limit = torch.tensor([0.0 if b is None else b for b in budgets], dtype=torch.float64)

    def excess(moved: torch.Tensor) -> torch.Tensor:  # [..., D] latencies -> [...] summed relative overshoot
        return ((moved - limit) * scale).clamp_min(0).sum(-1)

    for pair in (False, True):
        if not pair:
            gain, cost = over - excess(now + delta), lost
        else:
            gain = over - excess(now + delta[:, None, :] + delta[None, :, :])
            cost = lost[:, None] + lost[None, :]
            gain = torch.where(layer_of[:, None] < layer_of[None, :], gain, torch.zeros_like(gain))
        useful = gain > 1e-12
        if useful.any():
            score = torch.where(useful, cost / gain.clamp_min(1e-12), torch.full_like(gain, float("inf")))
            flat = int(score.argmin())
            if not pair:
                return [(flat // n_cands, flat % n_cands)]
            a, b = divmod(flat, score.shape[1])
            return [(a // n_cands, a % n_cands), (b // n_cands, b % n_cands)]
    return None


def _lagrangian(logp: torch.Tensor, tables: list[torch.Tensor], fixed: list[float],
                budgets: list[float | None], rounds: int = 200) -> list[int] | None:  # fmt: skip
    """The most likely network found within every budget by pricing each device's latency with a multiplier
    (per layer: argmax of log p - sum_d lambda_d * LUT_d / budget_d), raising the multipliers of the budgets a
    candidate breaks and easing the others. A way out where single swaps stall; None if it finds nothing."""
    lam = [0.0 if b is None else 0.05 for b in budgets]
    best, best_logp = None, -float("inf")
    for _ in range(rounds):
        score = logp.clone()
        for d, b in enumerate(budgets):
            if b is not None:
                score -= lam[d] * tables[d] / b * logp.shape[0]
        arch = score.argmax(dim=1).tolist()
        lats = [float(sum(t[layer, k] for layer, k in enumerate(arch))) + f for t, f in zip(tables, fixed,
                                                                                          strict=True)]  # fmt: skip
        if _excess(lats, budgets) <= 0:
            total = float(sum(logp[layer, k] for layer, k in enumerate(arch)))
            if total > best_logp:
                best, best_logp = arch, total
        for d, b in enumerate(budgets):
            if b is not None:
                lam[d] = lam[d] * 1.5 + 1e-3 if lats[d] > b else lam[d] * 0.85
    return best


def decode_budgets(theta: torch.Tensor, luts: list[LatencyLUT], budgets_us: list[float | None],
                   labels: list[str] | None = None) -> BudgetDecode:  # fmt: skip
    """One architecture within every device's budget (at most T_d on device d): the most likely one if it
    already is (never slowed down); otherwise the one- or two-layer changes that cost the least
    log-probability per unit of overshoot removed (relative to each budget, summed over devices), with a
    multiplier search as a way out where those stall; then any swap back toward probability that keeps every
    budget. A budget that
    cannot be met is named: either no network of the space meets it even alone, or none was found that meets
    it together with the others."""
    labels = labels or [f"device {d}" for d in range(len(luts))]
    theta = theta.detach().cpu()
    tables = [lut.table.detach().cpu().double() for lut in luts]
    fixed = [float(lut.fixed_us) for lut in luts]
    logp = torch.log_softmax(theta.double(), dim=-1)
    n_cands = logp.shape[1]

    def latencies(arch: list[int]) -> list[float]:
        return [float(sum(t[layer, k] for layer, k in enumerate(arch))) + f for t, f in zip(tables, fixed,
                                                                                          strict=True)]  # fmt: skip

    arch = most_likely(theta)
    for _ in range(theta.numel() * 4):
        move = _best_move(arch, logp, tables, latencies(arch), budgets_us)
        if move is None:
            break
        for layer, k in move:
            arch[layer] = k
    if _excess(latencies(arch), budgets_us) > 0:
        found = _lagrangian(logp, tables, fixed, budgets_us)
        if found is not None:
            arch = found
    if _excess(latencies(arch), budgets_us) <= 0:
        for _ in range(theta.numel() * 4):  # give back probability where every budget allows
            lats = latencies(arch)
            gains = []
            for layer, current in enumerate(arch):
                for k in range(n_cands):
                    moved = [lat + float(t[layer, k] - t[layer, current]) for lat, t in zip(lats, tables, strict=True)]
                    if _excess(moved, budgets_us) <= 0:
                        gains.append((float(logp[layer, k] - logp[layer, current]), layer, k))
            gain, layer, k = max(gains, default=(0.0, -1, -1))
            if gain <= 1e-9:
                break
            arch[layer] = k
    lats = latencies(arch)
    fastest = [float(t.min(dim=1).values.sum()) + f for t, f in zip(tables, fixed, strict=True)]
    met = [None if b is None else lat <= b for lat, b in zip(lats, budgets_us, strict=True)]
    parts = []
    for d, b in enumerate(budgets_us):
        if b is None:
            continue
        if met[d]:
            parts.append(f"{labels[d]} {lats[d] / 1e3:.4g} <= {b / 1e3:.4g} ms")
        elif fastest[d] > b:
            parts.append(f"{labels[d]}: budget {b / 1e3:.4g} ms cannot be met (the space's fastest network there is "
                         f"{fastest[d] / 1e3:.4g} ms)")  # fmt: skip
        else:
            parts.append(f"{labels[d]}: budget {b / 1e3:.4g} ms missed ({lats[d] / 1e3:.4g} ms): no network found "
                         "within it and every other budget together")  # fmt: skip
    if not parts:
        label = "most likely (no budget)"
    elif all(m is not False for m in met):
        label = "within every budget: " + "; ".join(parts)
    else:
        label = "not within every budget: " + "; ".join(p for p, m in zip(parts, [m for m in met if m is not None],
                                                                             strict=True) if not m)  # fmt: skip
    return BudgetDecode(arch, lats, list(budgets_us), met, fastest, label)
