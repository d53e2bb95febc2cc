"""Analytic parameter and multiply-add counts, from the op spec alone.

Counted per image (batch-independent), as the paper's FLOPs are: multiply-adds of convolutions and the
classifier; BatchNorm, ReLU, residual adds and pooling are free (BN folds into the conv at deployment).
Parameters count BN's weight and bias, as `sum(p.numel())` on the torch module does.
"""

from __future__ import annotations

from dataclasses import dataclass

from search.space.macro import SearchSpace
from search.space.opspec import OpSpec


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.macs + other.macs)


def _conv(cin: int, cout: int, k: int, out_pixels: int, groups: int = 1) -> Cost:
    weights = k * k * (cin // groups) * cout
    return Cost(params=weights + 2 * cout, macs=weights * out_pixels)


def op_cost(spec: OpSpec) -> Cost:
    ho, wo = spec.out_hw
    out_px, in_px = ho * wo, spec.h * spec.w
    if spec.kind == "conv":
        return _conv(spec.cin, spec.cout, spec.kernel, out_px)
    if spec.kind == "ir":
        mid = spec.cin * spec.expansion
        return (
            _conv(spec.cin, mid, 1, in_px, spec.groups)
            + _conv(mid, mid, spec.kernel, out_px, groups=mid)
            + _conv(mid, spec.cout, 1, out_px, spec.groups)
        )
    if spec.kind == "ds":
        return _conv(spec.cin, spec.cin, spec.kernel, out_px, groups=spec.cin) + _conv(spec.cin, spec.cout, 1, out_px)
    if spec.kind == "skip":
        return Cost(0, 0) if spec.is_identity else _conv(spec.cin, spec.cout, 1, out_px)
    if spec.kind in ("pool", "probe"):
        return Cost(0, 0)
    if spec.kind == "fc":
        return Cost(params=spec.cin * spec.cout + spec.cout, macs=spec.cin * spec.cout)
    raise ValueError(f"no cost model for {spec.kind!r}")


def network_cost(space: SearchSpace, arch: list[str] | tuple[str, ...]) -> Cost:
    total = Cost(0, 0)
    for spec in space.network_ops(arch):
        total = total + op_cost(spec)
    return total
