"""A table's prediction rule (search/tables/predict.py): what the service publishes and every client applies."""

import pytest

from profiler_service.schemas import MeasureConfig
from search.space.enumerate import enumerate_ops
from search.space.macro import fbnet_space
from search.tables.fidelity import halves
from search.tables.latency import PublishedTable, TableError, build_lut
from search.tables.predict import N_ANCHORS, PredictionRule, anchor_archs, fit_rule, probe_specs

SPACE = fbnet_space(32, 0.25, num_classes=10, candidates=("ir_k3_e1", "ir_k3_e6", "skip"))


def _medians(scale: float = 1.0) -> dict[str, float]:
    """Made-up but structured medians: bigger ops cost more, every op at least 8 us."""
    return {key: scale * (8.0 + spec.cin * spec.expansion * spec.h * spec.w / 500) for key, spec in
            enumerate_ops(SPACE).ops.items()}  # fmt: skip


def test_rule_subtracts_the_call_per_op_and_adds_the_anchors_constant():
    medians = _medians()
    probes = {key: 5.0 for key in probe_specs(enumerate_ops(SPACE).ops.values())}
    anchors = anchor_archs(SPACE)
    base = PredictionRule("overhead-v1", probes, 0.0)
    # Networks that really cost their ops' in-network times + 40 us (+-3 us of noise, one outlier).
    noise = [3, -3, 1, -1, 0, 2, -2, 60]
    measured = [base.core_us(SPACE, a, medians) + 40 + e for a, e in zip(anchors, noise, strict=True)]
    rule, published = fit_rule(SPACE, medians, probes, list(zip(anchors, measured, strict=True)))
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


def test_anchors_span_the_space_and_never_change():
    anchors = anchor_archs(SPACE)
    assert len(anchors) == N_ANCHORS and anchors == anchor_archs(SPACE)
    assert anchors[0] == ["skip"] * (len(SPACE.slots) - 1) + [anchors[0][-1]]  # the cheapest (by MACs)
    assert anchors[1] == ["ir_k3_e6"] * len(SPACE.slots)  # the dearest


def test_the_search_latency_term_prices_a_network_exactly_as_the_table_predicts_it():
    medians = _medians()
    probes = {key: 5.0 for key in probe_specs(enumerate_ops(SPACE).ops.values())}
    _, published = fit_rule(SPACE, medians, probes, [(a, 500.0) for a in anchor_archs(SPACE)])
    entries = [{"key": k, "median_us": v} for k, v in medians.items()]
    table = PublishedTable.parse({"space": SPACE.to_dict(), "entries": entries, "prediction": published})
    lut = build_lut(SPACE, table)
    for arch in (["skip"] * 22, ["ir_k3_e6"] * 22, ["ir_k3_e1", "skip"] * 11):
        idx = [SPACE.candidates.index(c) for c in arch]
        assert lut.of_arch(idx) == pytest.approx(table.predict_us(arch), rel=1e-5)
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
