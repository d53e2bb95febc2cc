"""`dnas table compare` and the API behind it on two tables whose numbers are chosen, not measured: device B
is twice as slow as A on one op, twice as fast on another, as fast on the rest. An inverted ratio (a/b), a
wrong order or a median of the wrong list shows here; two identical tables (ratio 1 everywhere) would hide it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from tests.hand_measured import measure_by_hand
from tests.service_harness import Service, register, running_service

TINY = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["ir_k3_e1", "skip"]}


def _measure_by_hand(svc: Service, name: str, median_of: dict[str, float] | None = None) -> tuple[int, dict]:
    """A device whose one run is measured with chosen medians: `median_of` by op key, or 100 + a counter for
    ops it does not name."""
    with svc.client() as admin:
        device = register(admin, name)
    counter = iter(range(1, 10_000))
    chosen = measure_by_hand(svc, device, TINY, lambda key: (median_of or {}).get(key, 100.0 + next(counter)))
    return device["id"], chosen


def test_compare_reports_b_over_a_per_op_the_most_different_first(tmp_path):
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path, lease_seconds=600) as svc:
        a_id, a = _measure_by_hand(svc, "phone-a")
        with svc.client() as admin:
            keys = [e["key"] for e in admin.get(f"/v1/devices/{a_id}/latency-tables/1").json()["entries"]]
        assert len(keys) >= 4
        slower, faster, a_bit = keys[0], keys[1], keys[2]  # B: 2x slower, 2x faster, 1.25x slower; the rest equal
        factor = dict.fromkeys(keys, 1.0) | {slower: 2.0, faster: 0.5, a_bit: 1.25}
        b_id, b = _measure_by_hand(svc, "phone-b", {k: a[k] * factor[k] for k in keys})
        with svc.client() as admin:
            result = admin.get("/v1/latency-tables/compare", params={"a": f"{a_id}:1", "b": f"{b_id}:1"}).json()
        env = os.environ | {"DNAS_SERVER": svc.url, "DNAS_TOKEN": svc.admin_token}
        cli = subprocess.run([sys.executable, "-m", "dnas", "table", "compare", f"{a_id}:1", f"{b_id}:1"], env=env,
                             capture_output=True, text=True, check=True, timeout=300).stdout  # fmt: skip
    assert result["a"]["device"]["id"] == a_id and result["b"]["device"]["id"] == b_id
    assert result["shared_ops"] == len(keys) and result["only_in_a"] == result["only_in_b"] == []
    rows = {r["key"]: r for r in result["ops"]}
    for key in keys:
        assert rows[key]["a_us"] == a[key] and rows[key]["b_us"] == b[key]
        assert rows[key]["ratio"] == pytest.approx(factor[key], rel=1e-12), key  # b over a, not a over b
    # The ops that differ most come first, by the size of the difference either way (2x and 0.5x tie).
    assert {r["key"] for r in result["ops"][:2]} == {slower, faster} and result["ops"][2]["key"] == a_bit
    assert all(math.isclose(r["ratio"], 1.0) for r in result["ops"][3:])
    ratios = sorted(factor.values())
    assert result["median_ratio"] == pytest.approx(ratios[len(ratios) // 2])
    lines = cli.splitlines()
    assert lines[0] == f"{len(keys)} shared ops, median ratio b/a = {result['median_ratio']:.3f}"
    top_two = sorted(line.split() for line in lines[1:3])
    assert top_two == sorted([["0.50x", f"{a[faster]:.1f}", "->", f"{b[faster]:.1f}", "us", faster],
                              ["2.00x", f"{a[slower]:.1f}", "->", f"{b[slower]:.1f}", "us", slower]])  # fmt: skip
