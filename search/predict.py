"""How a latency table predicts a whole network: the rule the service publishes with every table and every
client (search, validate, the quickstart) applies. Written once, here, so the two sides cannot drift.

An operator measured alone pays what a network pays once: the runtime call (binding the input, allocating
and returning the output). And inside a network an operator runs with colder caches than alone, a cost no
single operator can show. So each profiling run also measures, in the same interleaved rounds:
- a *probe* (one ReLU) at every input shape its operators take: the call overhead at that shape;
- a few *anchor* networks of the space, end to end.

    in_network(op)  = max(median(op) - overhead(probe at op's input), 0)
    predict(arch)   = sum of in_network(op) over the network's ops  +  constant
    constant        = median over anchors of (measured(anchor) - sum of in_network(op) over its ops)

Measured on this project's CI machine (onnxruntime 1.32, 1 thread), the constant is about one call (+5 us)
at 32 px / width 0.25, where per-call overhead dominates and the plain sum over-predicts by ~30%; at 224 px
it is ~+10% of a network, the cache cost of the large fixed layers (the classifier's 8 MB of weights stream
from memory in a network, not alone), where the plain sum under-predicts. One measured constant per table
fits both; anchors are drawn from their own seed, so `dnas validate`'s networks stay held out.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from search.opspec import OpSpec
from search.space import SearchSpace

RULE = "overhead-v1"
PLAIN = "sum"
N_ANCHORS = 3
DESCRIPTION = (
    "predict(arch) = sum over the network's ops of max(median_us - overhead_us[probe at the op's input], 0)"
    " + constant_us; constant_us = median over anchor networks of (measured - that sum)"
)


def anchor_archs(space: SearchSpace, n: int = N_ANCHORS) -> list[list[str]]:
    """Deterministic per space, and drawn from a seed no validation uses: anchors never leak into a check."""
    rng = random.Random(f"anchors:{space.hash}")
    return [[rng.choice(space.candidates) for _ in space.slots] for _ in range(n)]


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

    def overhead(self, spec: OpSpec) -> float:
        if self.kind == PLAIN:
            return 0.0
        return self.overhead_us.get(OpSpec.probe_at(spec.call_shape, spec.dtype).key, 0.0)

    def in_network_us(self, spec: OpSpec, median_us: float) -> float:
        """What this op adds to a network: its time alone, less the call a network pays only once."""
        return max(median_us - self.overhead(spec), 0.0)

    def core_us(self, space: SearchSpace, arch: Sequence[str], medians: dict[str, float]) -> float:
        return sum(self.in_network_us(spec, medians[spec.key]) for spec in space.network_ops(list(arch)))

    def predict(self, space: SearchSpace, arch: Sequence[str], medians: dict[str, float]) -> float:
        return self.core_us(space, arch, medians) + self.constant_us

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.kind, "overhead_us": dict(self.overhead_us), "constant_us": self.constant_us}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> PredictionRule:
        """The rule of a table as served; a table without one predicts with the plain sum."""
        pred = payload.get("prediction")
        if not pred:
            return cls()
        if pred.get("rule") not in (RULE, PLAIN):
            raise ValueError(f"unknown prediction rule {pred.get('rule')!r}; upgrade dnas to read this table")
        return cls(pred["rule"], {k: float(v) for k, v in pred.get("overhead_us", {}).items()},
                   float(pred.get("constant_us", 0.0)))  # fmt: skip


def fit_rule(
    space: SearchSpace,
    medians: dict[str, float],
    probes_us: dict[str, float],
    anchors: Sequence[tuple[Sequence[str], float]],
) -> tuple[PredictionRule, dict[str, Any]]:
    """The rule and what it was fitted from, as published in a table's `prediction` section. Without anchors
    the constant is one network call (the probe at the network's input); without probes, the plain sum."""
    if not probes_us:
        return PredictionRule(), {"rule": PLAIN, "description": "plain sum of the ops' medians"}
    base = PredictionRule(RULE, dict(probes_us), 0.0)
    stem = space.fixed_ops()["stem"]
    call_us = base.overhead(stem)
    rows = [
        {"arch": list(arch), "measured_us": float(measured), "sum_in_network_us": base.core_us(space, arch, medians)}
        for arch, measured in anchors
    ]
    if rows:
        constant = statistics.median(r["measured_us"] - r["sum_in_network_us"] for r in rows)
        source = "anchors"
    else:
        constant, source = call_us, "call overhead only (no anchors measured)"
    rule = PredictionRule(RULE, dict(probes_us), float(constant))
    published = rule.to_dict() | {
        "description": DESCRIPTION,
        "constant_from": source,
        "call_overhead_us": call_us,
        "anchors": rows,
    }
    return rule, published
