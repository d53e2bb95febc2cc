"""bench.targets' verdicts: the proof of issue 24 reads them, so a wrong comparison would prove nothing."""

from __future__ import annotations

from typing import Any

from bench.targets import band_verdicts, verdicts

OWN = {"for a": "a", "for b": "b"}


def seed_entry(on_a: tuple[float, float], on_b: tuple[float, float], noise: float = 0.0,
               drift: tuple[float, float] = (1.0, 1.0)) -> dict[str, Any]:  # fmt: skip
    """Networks "for a" and "for b" measured (ms) on targets a and b; budgets 1.0 ms on both, band +-10%."""
    rows = {"for a": (on_a[0], on_b[0]), "for b": (on_a[1], on_b[1])}
    names = list(rows)
    full = [list(rows[n]) for n in names]
    return {
        "matrix": {
            "devices": ["a", "b"],
            "architectures": names,
            "measured_ms": full,
            "predicted_ms": full,
            "measured_even_rounds_ms": [[x * (1 + noise / 2) for x in r] for r in full],
            "measured_odd_rounds_ms": [[x * (1 - noise / 2) for x in r] for r in full],
        },
        "budgets_ms": {"a": 1.0, "b": 1.0},
        "drift": {"a": drift[0], "b": drift[1]},
        "search_target": {"a": {"tolerance": 0.1}, "b": {"tolerance": 0.1}},
    }


def by_target(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["target"]: r for r in rows}


def test_a_network_cheap_everywhere_loses_the_speed_race_but_not_the_budget_verdict() -> None:
    # b's network is cheaper on both targets (it dropped layers): on a, a's own network is slower...
    entry = seed_entry(on_a=(1.0, 0.6), on_b=(1.8, 1.0), noise=0.02)
    fast = by_target(verdicts({"matrix": entry["matrix"]}, OWN))
    assert not fast["a"]["own_faster_beyond_noise"] and fast["b"]["own_faster_beyond_noise"]
    # ...but it leaves 40% of a's budget unspent, and a's own network spends it
    band = by_target(band_verdicts(entry, OWN))
    assert band["a"]["other_side"] == "under" and band["a"]["other_off_budget_pct"] == -40.0
    assert band["b"]["other_side"] == "over" and band["b"]["other_off_budget_pct"] == 80.0
    assert band["a"]["own_closer_beyond_noise"] and band["b"]["own_closer_beyond_noise"]


def test_a_difference_inside_the_noise_is_no_verdict() -> None:
    entry = seed_entry(on_a=(1.0, 0.8), on_b=(1.2, 1.0), noise=0.25)
    band = by_target(band_verdicts(entry, OWN))
    assert not band["a"]["own_closer_beyond_noise"] and not band["b"]["own_closer_beyond_noise"]
    assert band["a"]["other_side"] == "within"  # 0.8 ms +- 25% reaches the band's 0.9


def test_the_budget_is_compared_in_the_table_units_through_the_runs_drift() -> None:
    # the machine ran 30% slow in this run (anchors 1.3x their table price): a's network measured 1.3 ms is on
    # budget, and b's network measured 1.3 ms on b is too
    entry = seed_entry(on_a=(1.3, 2.6), on_b=(2.6, 1.3), drift=(1.3, 1.3))
    band = by_target(band_verdicts(entry, OWN))
    assert band["a"]["own_off_budget_pct"] == 0.0 and band["a"]["own_side"] == "within"
    assert band["a"]["other_off_budget_pct"] == 100.0 and band["a"]["own_closer_beyond_noise"]
