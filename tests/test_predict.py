"""A table's prediction rule (search/tables/predict.py): what the service publishes and every client applies."""

import pytest
import torch

from profiler_service.schemas import MeasureConfig
from search.space.enumerate import enumerate_ops
from search.space.macro import fbnet_space
from search.space.opspec import OpSpec
from search.tables.fidelity import halves
from search.tables.latency import PublishedTable, TableError, build_lut
from search.tables.predict import (
    N_ANCHORS,
    PredictionRule,
    anchor_archs,
    computing_ops,
    fit_rule,
    probe_specs,
    theil_sen,
)

SPACE = fbnet_space(32, 0.25, num_classes=10, candidates=("ir_k3_e1", "ir_k3_e6", "skip"))


def _medians(scale: float = 1.0) -> dict[str, float]:
    """Made-up but structured medians: bigger ops cost more, every op at least 8 us."""
    return {key: scale * (8.0 + spec.cin * spec.expansion * spec.h * spec.w / 500) for key, spec in
            enumerate_ops(SPACE).ops.items()}  # fmt: skip


def test_rule_subtracts_the_call_per_op_and_adds_the_anchors_constant():
    medians = _medians()
    probes = {key: 5.0 for key in probe_specs(enumerate_ops(SPACE).ops.values())}
    anchors = anchor_archs(SPACE)
    base = PredictionRule("overhead-v2", probes, 0.0)
    # Networks that really cost their ops' in-network times + 40 us (+-3 us of noise, one outlier): no per-op
    # trend, so leave-one-out keeps the constant alone and the rule is the constant-only one.
    noise = [3, -3, 1, -1, 0, 2, -2, 60, 1, -1, 2, -2]
    measured = [base.core_us(SPACE, a, medians) + 40 + e for a, e in zip(anchors, noise, strict=True)]
    rule, published = fit_rule(SPACE, medians, probes, list(zip(anchors, measured, strict=True)))
    assert rule.per_op_us == 0.0 and published["per_op_us"] == 0.0 and published["per_op"]["kept"] is False
    assert rule.constant_us == pytest.approx(40.5)  # the median: the outlier anchor moves it by half a us
    assert published["call_overhead_us"] == 5.0 and published["constant_from"] == "anchors"
    assert 0 < published["constant_se_us"] < published["constant_spread_us"] < 10
    arch = ["ir_k3_e6"] * len(SPACE.slots)
    n_ops = len(SPACE.network_ops(arch))
    assert rule.predict(SPACE, arch, medians) == pytest.approx(sum(medians[s.key] for s in SPACE.network_ops(arch))
                                                              - 5.0 * n_ops + 40.5)  # fmt: skip
    # An op cheaper than its call (an identity skip) costs nothing in a network, never less.
    skip = next(s for s in SPACE.network_ops(["skip"] * len(SPACE.slots)) if s.is_identity)
    assert rule.in_network_us(skip, 3.0) == 0.0


def _per_op_anchors(per_op_us: float, outlier_us: float = 0.0) -> tuple[dict, dict, list]:
    """Anchors that really cost their ops' in-network times + 30 us + `per_op_us` per computing op, +-2 us of
    noise, the dearest `outlier_us` off (a disturbed anchor)."""
    medians = _medians()
    probes = {key: 5.0 for key in probe_specs(enumerate_ops(SPACE).ops.values())}
    base = PredictionRule("overhead-v2", probes, 0.0)
    noise = [2, -2, 1, -1, 0, 2, -2, 1, -1, 0, 2, -2]
    anchors = anchor_archs(SPACE)
    measured = [base.core_us(SPACE, a, medians) + 30 + per_op_us * computing_ops(SPACE, a) + e + (outlier_us if i == 1
                else 0) for i, (a, e) in enumerate(zip(anchors, noise, strict=True))]  # fmt: skip
    return medians, probes, list(zip(anchors, measured, strict=True))


def test_anchors_that_pay_a_cost_per_computing_op_give_that_cost_back_despite_an_outlier():
    medians, probes, anchors = _per_op_anchors(3.0, outlier_us=300.0)
    rule, published = fit_rule(SPACE, medians, probes, anchors)
    assert rule.per_op_us == pytest.approx(3.0, abs=0.3) and published["per_op"]["kept"] is True
    loo = published["per_op"]["loo_error_pct"]
    assert loo["with_per_op"] < loo["constant_only"]
    assert all(a["computing_ops"] == computing_ops(SPACE, a["arch"]) for a in published["anchors"])
    # A skip-heavy network and a dense one, predicted within a few us of what they cost; a constant alone,
    # fitted on the same anchors, misses the skip-heavy one by tens of us.
    base = PredictionRule("overhead-v2", probes, 0.0)
    constant_only = PredictionRule("overhead-v2", probes, sorted(m - base.core_us(SPACE, a, medians)
                                                                 for a, m in anchors)[len(anchors) // 2])  # fmt: skip
    for arch in (["skip"] * 21 + ["ir_k3_e1"], ["ir_k3_e6"] * 22, ["ir_k3_e1", "skip", "skip"] * 7 + ["skip"]):
        truth = base.core_us(SPACE, arch, medians) + 30 + 3.0 * computing_ops(SPACE, arch)
        assert rule.predict(SPACE, arch, medians) == pytest.approx(truth, abs=8)
    sparse = ["skip"] * 21 + ["ir_k3_e1"]
    truth = base.core_us(SPACE, sparse, medians) + 30 + 3.0 * computing_ops(SPACE, sparse)
    assert constant_only.predict(SPACE, sparse, medians) - truth > 30


def test_theil_sen_ignores_one_wild_point_and_needs_two_x_values():
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [12.0, 14.0, 16.0, 18.0, 400.0]
    assert theil_sen(x, y) == pytest.approx((2.0, 10.0))
    assert theil_sen([3.0, 3.0], [1.0, 2.0]) is None


def test_a_table_published_before_the_per_op_term_predicts_exactly_as_before():
    medians = _medians()
    probes = {key: 4.0 + i for i, key in enumerate(probe_specs(enumerate_ops(SPACE).ops.values()))}
    entries = [{"key": k, "median_us": v} for k, v in medians.items()]
    v1 = {"rule": "overhead-v1", "overhead_us": probes, "constant_us": 12.5}
    table = PublishedTable.parse({"space": SPACE.to_dict(), "entries": entries, "prediction": v1})
    assert table.rule.per_op_us == 0.0
    for arch in (["skip"] * 22, ["ir_k3_e6"] * 22, ["ir_k3_e1", "skip"] * 11):
        ops = SPACE.network_ops(arch)
        before = sum(max(medians[s.key] - probes[OpSpec.probe_at(s.call_shape).key], 0.0) for s in ops) + 12.5
        assert table.predict_us(arch) == before
        lut = build_lut(SPACE, table)
        assert lut.of_arch([SPACE.candidates.index(c) for c in arch]) == pytest.approx(before, rel=1e-5)


def test_without_anchors_the_constant_is_one_call_and_without_probes_the_plain_sum():
    medians = _medians()
    probes = {key: 5.0 + i for i, key in enumerate(probe_specs(enumerate_ops(SPACE).ops.values()))}
    rule, published = fit_rule(SPACE, medians, probes, [])
    assert rule.constant_us == published["call_overhead_us"] == 5.0  # the smallest probe, not a big ReLU
    plain, _ = fit_rule(SPACE, medians, {}, [])
    arch = ["ir_k3_e1"] * len(SPACE.slots)
    assert plain.predict(SPACE, arch, medians) == pytest.approx(sum(medians[s.key] for s in SPACE.network_ops(arch)))
    with pytest.raises(ValueError, match="unknown prediction rule"):
        PredictionRule.from_payload({"prediction": {"rule": "gnn-v9"}})


def test_anchors_span_the_space_and_the_skip_fraction_and_never_change():
    anchors = anchor_archs(SPACE)
    assert len(anchors) == N_ANCHORS == 12 and anchors == anchor_archs(SPACE)
    assert anchors[0] == ["skip"] * (len(SPACE.slots) - 1) + [anchors[0][-1]]  # the cheapest (by MACs)
    assert anchors[1] == ["ir_k3_e6"] * len(SPACE.slots)  # the dearest
    skips = [a.count("skip") for a in anchors]
    # Six uniform ones (a third of the layers skip, with 3 candidates), then four skip-heavy ones (40%, 70%):
    # the anchors compute from a handful of ops to all of them.
    assert sum(skips[8:]) / 4 > sum(skips[2:8]) / 6 + 3 and min(skips[8:]) >= 5
    assert max(skips[9], skips[11]) >= 0.6 * len(SPACE.slots)
    assert len({computing_ops(SPACE, a) for a in anchors}) >= 6


def test_the_search_latency_term_prices_a_network_exactly_as_the_table_predicts_it():
    medians, probes, anchors = _per_op_anchors(2.0)
    _, published = fit_rule(SPACE, medians, probes, anchors)
    entries = [{"key": k, "median_us": v} for k, v in medians.items()]
    table = PublishedTable.parse({"space": SPACE.to_dict(), "entries": entries, "prediction": published})
    assert table.rule.per_op_us == pytest.approx(2.0, abs=0.3)  # a per-op term the LUT must carry
    lut = build_lut(SPACE, table)
    for arch in (["skip"] * 22, ["ir_k3_e6"] * 22, ["ir_k3_e1", "skip"] * 11):
        idx = [SPACE.candidates.index(c) for c in arch]
        assert lut.of_arch(idx) == pytest.approx(table.predict_us(arch), rel=1e-5)
        one_hot = torch.nn.functional.one_hot(torch.tensor(idx), len(SPACE.candidates)).float()
        assert float(lut.expected(one_hot)) == pytest.approx(table.predict_us(arch), rel=1e-5)  # the LAT term
    with pytest.raises(TableError, match="unknown prediction rule"):
        _ = PublishedTable.parse(table.to_dict() | {"prediction": {"rule": "gnn-v9"}}).rule


@pytest.mark.parametrize(
    ("given", "rounds", "per_round"),
    [({}, 20, 3), ({"runs": 60}, 20, 3), ({"runs": 50}, 10, 5), ({"runs": 15}, 15, 1), ({"rounds": 8}, 8, 3),
     ({"runs": 40, "runs_per_round": 4}, 10, 4), ({"runs": 40, "rounds": 5}, 5, 8),
     ({"rounds": 4, "runs_per_round": 2}, 4, 2)],
)  # fmt: skip
def test_measure_config_times_exactly_what_was_asked(given, rounds, per_round):
    cfg = MeasureConfig.model_validate(given)
    assert (cfg.rounds, cfg.runs_per_round, cfg.runs) == (rounds, per_round, rounds * per_round)
    assert MeasureConfig.model_validate(cfg.model_dump()).hash == cfg.hash  # stable when stored and re-read


@pytest.mark.parametrize("given", [{"runs": 50, "rounds": 20}, {"runs": 50, "runs_per_round": 3},
                                   {"runs": 50, "rounds": 20, "runs_per_round": 3}])  # fmt: skip
def test_measure_config_refuses_numbers_that_do_not_multiply_out(given):
    with pytest.raises(ValueError):
        MeasureConfig.model_validate(given)


def test_noise_ceiling_halves_are_even_and_odd_rounds():
    assert halves({"round_medians_us": [1.0, 10.0, 2.0, 20.0, 3.0, 30.0]}) == (2.0, 20.0)
    assert halves({"round_medians_us": [5.0]}) is None and halves({}) is None
