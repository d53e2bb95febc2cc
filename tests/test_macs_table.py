"""The multiply-add price: the FLOP counter a device table is compared against must count what cost.py counts."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from search.space.cost import network_cost
from search.space.macro import get_space
from search.tables.latency import build_lut
from search.tables.macs import macs_table
from search.tables.schema import PublishedTable

SPACE = get_space("fbnet", resolution=32, width=0.25, num_classes=10)


def test_a_networks_price_is_its_multiply_adds_in_thousands() -> None:
    table = PublishedTable.parse(macs_table(SPACE))
    rng = random.Random(3)
    for _ in range(20):
        arch = [rng.choice(SPACE.candidates) for _ in SPACE.slots]
        assert table.predict_us(arch) == pytest.approx(network_cost(SPACE, arch).macs / 1e3, rel=1e-12)


def test_the_search_sees_each_candidates_multiply_adds() -> None:
    """The super net's latency term reads the LUT: a candidate's entry must be its multiply-adds, skips cheapest."""
    lut = build_lut(SPACE, PublishedTable.parse(macs_table(SPACE)))
    e6, skip = SPACE.candidates.index("ir_k3_e6"), SPACE.candidates.index("skip")
    arch_e6 = [e6] * len(SPACE.slots)
    assert abs(
        lut.of_arch(arch_e6) - network_cost(SPACE, ["ir_k3_e6"] * len(SPACE.slots)).macs / 1e3
    ) < 1e-3 * lut.of_arch(arch_e6)
    assert all(float(row[skip]) <= float(row[e6]) for row in lut.table)


def test_the_cli_writes_a_table_for_the_space_it_was_asked_for(tmp_path) -> None:
    out = tmp_path / "macs.json"
    cmd = [sys.executable, "-m", "dnas", "space", "macs-table", "-o", str(out)]
    cmd += ["--resolution", "32", "--width", "0.25", "--classes", "10"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(out.read_text())
    assert payload["space_hash"] == SPACE.hash
    assert payload["config"] == {"price": "macs", "unit": "kMAC"}
    skips = ["skip"] * len(SPACE.slots)
    assert PublishedTable.from_file(out).predict_us(skips) == pytest.approx(network_cost(SPACE, skips).macs / 1e3)
