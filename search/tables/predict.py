"""How a latency table predicts a whole network: the rule the service publishes with every table and every
client (search, validate, the quickstart) applies. Written once, here, so the two sides cannot drift.

An operator measured alone pays what a network pays once: the runtime call (binding the input, allocating
and returning the output). And inside a network an operator runs with colder caches than alone, a cost no
single operator can show. So each profiling run also measures, in the same interleaved rounds:
- a *probe* (one ReLU) at every input shape its operators take: the call overhead at that shape;
- twelve *anchor* networks of the space, end to end: its cheapest and its dearest, six at random and four
  heavy in identity skips (two at 40%, two at 70%), so the anchors span how many ops a network computes.

    in_network(op)  = max(median(op) - overhead(probe at op's input) + per_op [op computes], 0)
    predict(arch)   = sum of in_network(op) over the network's ops  +  constant
    per_op          = Theil-Sen slope, over anchors, of (measured - that sum without per_op) against the
                      number of ops that compute (all but identity skips); kept only when it predicts the
                      anchors better left-one-out than the constant alone, else 0
    constant        = median over anchors of (measured(anchor) - sum of in_network(op) over its ops)

The per-op term is for what a constant cannot carry: a cost every computing op pays inside a network and not
alone (or the reverse), which grows with the number of such ops. In int8 at 32 px a network paid 2.2-2.7 us
per computing op beyond its table entries in two runs (issue 24), so a constant fitted on networks with few
skips over-predicts skip-heavy ones, which is where a search under a budget lands. Theil-Sen (the median of the
pairwise slopes) is what one outlying anchor cannot drag; the leave-one-out test keeps a table at the
constant-only rule where the anchors do not show the trend (rule `overhead-v2` with `per_op_us` 0 predicts
exactly as `overhead-v1`, which tables published before it keep).

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

import itertools
import random
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from search.space.cost import op_cost
from search.space.macro import SearchSpace
from search.space.opspec import OpSpec
from search.space.quantize import dtype_of

RULE = "overhead-v2"
RULE_V1 = "overhead-v1"  # tables published before the per-op term: read with per_op_us = 0, as they predicted
PLAIN = "sum"
PLAIN_DESCRIPTION = "plain sum of the ops' medians"
N_ANCHORS = 12
SKIP_FRACTIONS = (0.4, 0.7)  # the skip-heavy anchors' share of identity skips, alternating
MIN_ANCHORS_PER_OP = 4  # fewer anchors than this cannot support a slope left-one-out: per_op_us stays 0
DESCRIPTION = (
    "predict(arch) = sum over the network's ops of max(median_us - overhead_us[probe at the op's input]"
    " + per_op_us if the op computes (all but identity skips), 0) + constant_us; per_op_us = Theil-Sen slope"
    " over anchor networks of (measured - that sum without it) against their computing ops, kept only when"
    " leave-one-out over the anchors beats the constant alone, else 0; constant_us = median over anchor"
    " networks of (measured - that sum)"
)


def anchor_archs(space: SearchSpace, n: int = N_ANCHORS) -> list[list[str]]:
    """The networks a run measures whole to fit its rule: the space's cheapest and dearest (fewest and most
    multiply-adds per layer), so the rule holds at both ends of the range (a search lands at the fast end),
    random ones between, and (when the space offers the identity skip) skip-heavy ones: of the n - 2 after the
    ends, the last 2 in 5 draw each layer as a skip with probability 0.4 or 0.7 (alternating), else uniformly
    among the other candidates. Uniform sampling gives a network 1 skip in 9; a search under a budget picks
    many more, and the per-op term is only seen across networks that differ in how many ops compute.
    Deterministic per space, from seeds no validation uses."""

    def by_macs(pick: Callable[..., str]) -> list[str]:
        return [
            pick(space.candidates, key=lambda c, s=slot: op_cost(s.op(c, space.batch)).macs) for slot in space.slots
        ]

    ends = [by_macs(min), by_macs(max)][:n]
    rest = max(0, n - len(ends))
    others = [c for c in space.candidates if c != "skip"]
    heavy = rest * 2 // 5 if "skip" in space.candidates and others else 0
    rng = random.Random(f"anchors:{space.hash}")
    randoms = [[rng.choice(space.candidates) for _ in space.slots] for _ in range(rest - heavy)]
    rng_skips = random.Random(f"anchors-skips:{space.hash}")
    skip_heavy = [skip_heavy_arch(space, SKIP_FRACTIONS[i % len(SKIP_FRACTIONS)], rng_skips) for i in range(heavy)]
    return [*ends, *randoms, *skip_heavy]


def skip_heavy_arch(space: SearchSpace, share: float, rng: random.Random) -> list[str]:
    """A network whose layers are each an identity skip with probability `share`, else uniformly one of the
    other candidates: what a search under a tight budget looks like (the skip-heavy anchors, and the networks
    `bench.fidelity --skip-heavy` checks the rule on)."""
    others = [c for c in space.candidates if c != "skip"] or list(space.candidates)
    return ["skip" if rng.random() < share else rng.choice(others) for _ in space.slots]


def computing_ops(space: SearchSpace, arch: Sequence[str]) -> int:
    """How many of a network's ops compute: all but its identity skips (what the per-op term counts)."""
    return sum(not spec.is_identity for spec in space.network_ops(list(arch)))


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
    per_op_us: float = 0.0  # what each op that computes pays in a network beyond alone (0 before overhead-v2)

    def overhead(self, spec: OpSpec) -> float:
        if self.kind == PLAIN:
            return 0.0
        return self.overhead_us.get(OpSpec.probe_at(spec.call_shape, spec.dtype).key, 0.0)

    def in_network_us(self, spec: OpSpec, median_us: float) -> float:
        """What this op adds to a network: its time alone, less the call a network pays only once, plus the
        per-op term if it computes (an identity skip does not). Every client prices an op by this one number:
        the search's LUT entries, predict(), the dashboard's heatmap."""
        per_op = 0.0 if spec.is_identity else self.per_op_us
        return max(median_us - self.overhead(spec) + per_op, 0.0)

    def core_us(self, space: SearchSpace, arch: Sequence[str], medians: dict[str, float]) -> float:
        ops = space.network_ops(list(arch), self.dtype)
        return sum(self.in_network_us(spec, medians[spec.key]) for spec in ops)

    def predict(self, space: SearchSpace, arch: Sequence[str], medians: dict[str, float]) -> float:
        return self.core_us(space, arch, medians) + self.constant_us

    def to_dict(self) -> dict[str, Any]:
        out = {"rule": self.kind, "overhead_us": dict(self.overhead_us), "constant_us": self.constant_us}
        return out | ({"per_op_us": self.per_op_us} if self.kind == RULE else {})

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
        if pred.get("rule") not in (RULE, RULE_V1, PLAIN):
            raise ValueError(f"unknown prediction rule {pred.get('rule')!r}; upgrade dnas to read this table")
        per_op = float(pred.get("per_op_us") or 0.0) if pred["rule"] == RULE else 0.0
        return cls(pred["rule"], {k: float(v) for k, v in pred.get("overhead_us", {}).items()},
                   float(pred.get("constant_us", 0.0)), dtype, per_op)  # fmt: skip


def theil_sen(x: Sequence[float], y: Sequence[float]) -> tuple[float, float] | None:
    """(slope, intercept) of y against x: the median of the pairwise slopes, then the median of y - slope * x.
    One wild point moves neither (a least-squares line it drags); None when x takes a single value."""
    slopes = [(y[j] - y[i]) / (x[j] - x[i]) for i, j in itertools.combinations(range(len(x)), 2) if x[i] != x[j]]
    if not slopes:
        return None
    slope = statistics.median(slopes)
    return slope, statistics.median(yi - slope * xi for xi, yi in zip(x, y, strict=True))


def leave_one_out_pct(x: Sequence[float], y: Sequence[float], measured: Sequence[float], per_op: bool) -> float:
    """Mean absolute error (% of each anchor's time) of each anchor's residual y predicted from the others: by
    their median (the constant alone), or (per_op) by their Theil-Sen line."""
    errors = []
    for j in range(len(x)):
        xs, ys = [*x[:j], *x[j + 1 :]], [*y[:j], *y[j + 1 :]]
        line = theil_sen(xs, ys) if per_op else None
        guess = line[1] + line[0] * x[j] if line else statistics.median(ys)
        errors.append(abs(guess - y[j]) / measured[j] * 100)
    return statistics.mean(errors)


def fit_per_op(x: Sequence[float], y: Sequence[float], measured: Sequence[float]) -> tuple[float, dict[str, Any]]:
    """The per-op term from the anchors (x: computing ops, y: measured - sum without the term), and what
    supports it. Kept only when predicting each anchor from the others with it beats the constant alone:
    otherwise 0, and the table predicts as the constant-only rule would."""
    if len(x) < MIN_ANCHORS_PER_OP or len(set(x)) < 2:
        return 0.0, {"kept": False, "why": f"needs {MIN_ANCHORS_PER_OP}+ anchors computing different numbers of ops"}
    line = theil_sen(x, y) or (0.0, 0.0)  # never the fallback: x takes two values or more
    with_term, without = leave_one_out_pct(x, y, measured, True), leave_one_out_pct(x, y, measured, False)
    kept = with_term < without
    support = {
        "fitted_us": line[0],
        "kept": kept,
        "loo_error_pct": {"with_per_op": with_term, "constant_only": without},
        "why": "leave-one-out over the anchors: " + ("better with it" if kept else "no better with it; 0 used"),
        "computing_ops": [int(min(x)), int(max(x))],
    }
    return (line[0] if kept else 0.0), support


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
    2.0% MAPE at 32 px): it over-subtracts its own work. The recipe leaves a lone ReLU probe in float. What the
    boundary does not cancel (two int8 runs at 32 px: a network pays 2.2-2.7 us per computing op beyond its
    entries, so a constant fitted on uniform networks over-predicts skip-heavy ones) is the per-op term's job,
    fitted and checked on the anchors here (`fit_per_op`), for every precision alike."""
    if not probes_us:
        return PredictionRule(dtype=dtype), {"rule": PLAIN, "description": PLAIN_DESCRIPTION}
    base = PredictionRule(RULE, dict(probes_us), 0.0, dtype)
    call_us = min(probes_us.values())  # the smallest shape's probe: the call itself, no data worth the name
    measured = [float(m) for _, m in anchors]
    x = [float(computing_ops(space, arch)) for arch, _ in anchors]
    y = [m - base.core_us(space, arch, medians) for (arch, _), m in zip(anchors, measured, strict=True)]
    per_op, support = fit_per_op(x, y, measured) if anchors else (0.0, {"kept": False, "why": "no anchors"})
    with_per_op = PredictionRule(RULE, dict(probes_us), 0.0, dtype, per_op)
    rows = [
        {"arch": list(arch), "measured_us": m, "sum_in_network_us": with_per_op.core_us(space, arch, medians),
         "computing_ops": int(n)}
        for (arch, _), m, n in zip(anchors, measured, x, strict=True)
    ]  # fmt: skip
    residuals = [r["measured_us"] - r["sum_in_network_us"] for r in rows]
    spread = None
    if residuals:
        constant, source = statistics.median(residuals), "anchors"
        if len(residuals) > 1:  # a robust spread (MAD scaled to a standard deviation) of what one anchor says
            spread = 1.4826 * statistics.median(abs(r - constant) for r in residuals)
    else:
        constant, source = call_us, "call overhead only (no anchors measured)"
    rule = PredictionRule(RULE, dict(probes_us), float(constant), dtype, per_op)
    published = rule.to_dict() | {
        "description": DESCRIPTION,
        "constant_from": source,
        "constant_spread_us": spread,
        # The median of n anchors is about 1.25 sd / sqrt(n) from the truth: what every prediction may share.
        "constant_se_us": None if spread is None else 1.2533 * spread / len(residuals) ** 0.5,
        "call_overhead_us": call_us,
        "per_op": support,
        "anchors": rows,
    }
    return rule, published
