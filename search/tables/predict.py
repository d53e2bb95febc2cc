"""How a latency table predicts a whole network: the rule the service publishes with every table and every
client (search, validate, the quickstart) applies. Written once, here, so the two sides cannot drift.

An operator measured alone pays what a network pays once: the runtime call (binding the input, allocating
and returning the output). And inside a network an operator runs with colder caches than alone, a cost no
single operator can show. So each profiling run also measures, in the same interleaved rounds:
- a *probe* (one ReLU) at every input shape its operators take: the call overhead at that shape;
- eight *anchor* networks of the space, end to end (its cheapest, its dearest, and six at random).

    in_network(op)  = max(median(op) - overhead(probe at op's input), 0)
    predict(arch)   = sum of in_network(op) over the network's ops  +  constant
    constant        = median over anchors of (measured(anchor) - sum of in_network(op) over its ops)

In the FBNet spaces every candidate of a layer takes the same input shape, so the probes subtract the same
total from every network and the constant carries the whole correction; the probes still make each LUT
entry an in-network cost (what the search's latency term should weigh) and matter for spaces whose networks
differ in shape. Measured on this project's CI machine (onnxruntime 1.32, 1 thread): at 32 px / width 0.25,
where the plain sum over-predicts by ~30% (a call per op), the constant comes out near one call; at 224 px,
where the plain sum under-predicts by 7-10% (the classifier's 8 MB of weights stream from memory in a
network, not alone), it is ~+10% of a network. One measured constant per table fits both. The table also
publishes the constant's spread over anchors and its standard error: every prediction of the table shares
that error.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from search.space.cost import op_cost
from search.space.macro import SearchSpace
from search.space.opspec import OpSpec
from search.space.quantize import dtype_of

RULE = "overhead-v1"
PLAIN = "sum"
PLAIN_DESCRIPTION = "plain sum of the ops' medians"
N_ANCHORS = 8
DESCRIPTION = (
    "predict(arch) = sum over the network's ops of max(median_us - overhead_us[probe at the op's input], 0)"
    " + constant_us; constant_us = median over anchor networks of (measured - that sum)"
)


def anchor_archs(space: SearchSpace, n: int = N_ANCHORS) -> list[list[str]]:
    """The networks a run measures whole to fit its constant: the space's cheapest and dearest (fewest and most
    multiply-adds per layer), so the constant holds at both ends of the range (a search lands at the fast
    end), and random ones between. Deterministic per space, from a seed no validation uses."""

    def by_macs(pick: Callable[..., str]) -> list[str]:
        return [
            pick(space.candidates, key=lambda c, s=slot: op_cost(s.op(c, space.batch)).macs) for slot in space.slots
        ]

    ends = [by_macs(min), by_macs(max)][:n]
    rng = random.Random(f"anchors:{space.hash}")
    randoms = [[rng.choice(space.candidates) for _ in space.slots] for _ in range(max(0, n - len(ends)))]
    return [*ends, *randoms]


def probe_specs(ops: Iterable[OpSpec]) -> dict[str, OpSpec]:
    """One probe per distinct input shape of these ops (the stem's input is the network's own call)."""
    probes: dict[str, OpSpec] = {}
    for spec in ops:
        probe = OpSpec.probe_at(spec.call_shape, spec.dtype)
        probes.setdefault(probe.key, probe)
    return probes


@dataclass(frozen=True)
class PredictionRule:
    """A table's prediction rule. `kind == "sum"` is the plain sum (tables published before probes)."""

    kind: str = PLAIN
    overhead_us: dict[str, float] = field(default_factory=dict)  # probe key -> microseconds
    constant_us: float = 0.0
    # The dtype of the table's ops (its config's precision): an int8 table prices a network by its int8 keys.
    dtype: str = "float32"

    def overhead(self, spec: OpSpec) -> float:
        if self.kind == PLAIN:
            return 0.0
        return self.overhead_us.get(OpSpec.probe_at(spec.call_shape, spec.dtype).key, 0.0)

    def in_network_us(self, spec: OpSpec, median_us: float) -> float:
        """What this op adds to a network: its time alone, less the call a network pays only once."""
        return max(median_us - self.overhead(spec), 0.0)

    def core_us(self, space: SearchSpace, arch: Sequence[str], medians: dict[str, float]) -> float:
        ops = space.network_ops(list(arch), self.dtype)
        return sum(self.in_network_us(spec, medians[spec.key]) for spec in ops)

    def predict(self, space: SearchSpace, arch: Sequence[str], medians: dict[str, float]) -> float:
        return self.core_us(space, arch, medians) + self.constant_us

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.kind, "overhead_us": dict(self.overhead_us), "constant_us": self.constant_us}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> PredictionRule:
        """The rule of a table as served; a table without one predicts with the plain sum."""
        dtype = dtype_of((payload.get("config") or {}).get("precision", "fp32"))
        return cls.from_published(payload.get("prediction"), dtype)

    @classmethod
    def from_published(cls, pred: dict[str, Any] | None, dtype: str = "float32") -> PredictionRule:
        """The rule from a table's `prediction` section, for ops of `dtype` (the table's precision)."""
        if not pred:
            return cls(dtype=dtype)
        if pred.get("rule") not in (RULE, PLAIN):
            raise ValueError(f"unknown prediction rule {pred.get('rule')!r}; upgrade dnas to read this table")
        return cls(pred["rule"], {k: float(v) for k, v in pred.get("overhead_us", {}).items()},
                   float(pred.get("constant_us", 0.0)), dtype)  # fmt: skip


def fit_rule(
    space: SearchSpace,
    medians: dict[str, float],
    probes_us: dict[str, float],
    anchors: Sequence[tuple[Sequence[str], float]],
    dtype: str = "float32",
) -> tuple[PredictionRule, dict[str, Any]]:
    """The rule and what it was fitted from, as published in a table's `prediction` section. Without anchors
    the constant is one network call (the probe at the network's input); without probes, the plain sum.

    int8 tables use the same rule, measured rather than assumed (issue 24): inside an int8 network onnxruntime
    fuses every Q/DQ pair between ops and keeps the NHWC layout across them, so an op alone pays a boundary
    (its input's Q and layout transpose, its output's transpose and DQ) that the network does not. In the FBNet
    spaces every candidate of a layer but the identity skip pays the same boundary, so the anchors' constant
    absorbs it (it comes out negative when the boundaries outweigh the call), as it absorbs the call overhead.
    A probe that pays the int8 boundary itself (a quantized 1x1 depthwise conv) predicted worse (4.3% against
    2.0% MAPE at 32 px): it over-subtracts its own work. The recipe leaves a lone ReLU probe in float."""
    if not probes_us:
        return PredictionRule(dtype=dtype), {"rule": PLAIN, "description": PLAIN_DESCRIPTION}
    base = PredictionRule(RULE, dict(probes_us), 0.0, dtype)
    call_us = min(probes_us.values())  # the smallest shape's probe: the call itself, no data worth the name
    rows = [
        {"arch": list(arch), "measured_us": float(measured), "sum_in_network_us": base.core_us(space, arch, medians)}
        for arch, measured in anchors
    ]
    residuals = [r["measured_us"] - r["sum_in_network_us"] for r in rows]
    spread = None
    if residuals:
        constant, source = statistics.median(residuals), "anchors"
        if len(residuals) > 1:  # a robust spread (MAD scaled to a standard deviation) of what one anchor says
            spread = 1.4826 * statistics.median(abs(r - constant) for r in residuals)
    else:
        constant, source = call_us, "call overhead only (no anchors measured)"
    rule = PredictionRule(RULE, dict(probes_us), float(constant), dtype)
    published = rule.to_dict() | {
        "description": DESCRIPTION,
        "constant_from": source,
        "constant_spread_us": spread,
        # The median of n anchors is about 1.25 sd / sqrt(n) from the truth: what every prediction may share.
        "constant_se_us": None if spread is None else 1.2533 * spread / len(residuals) ** 0.5,
        "call_overhead_us": call_us,
        "anchors": rows,
    }
    return rule, published
