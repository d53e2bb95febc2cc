"""The rules the iOS app shares with the Python agent, held as data in device_agents/ios/spec/ and checked on
both sides: here against the Python reference (and a real service), and by `swift test` in device_agents/ios
against the Swift code wherever a Swift toolchain exists (none does on this project's CI, so the Swift side of
each rule is checked here by a line-for-line transcription where that is the only way: the visit orders).

- url_resolution.json: where a call or a model_url goes, resolved against the configured server URL; the token
  goes nowhere else (PROTOCOL.md step 3).
- visit_orders.json: rounds.py's visit orders (random.Random(seed).shuffle) that Rounds.swift reproduces.
- result_posting.json: what an agent does with each answer when reporting a batch; a whole-batch 422 falls back
  to one POST per result (PROTOCOL.md step 6)."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest

from device_agents.client import AgentClient
from device_agents.loop import Agent
from search.measurement.rounds import visit_orders
from tests.service_harness import register, running_service, start_run

SPEC = Path(__file__).resolve().parent.parent / "device_agents" / "ios" / "spec"


def _spec(name: str) -> dict:
    return json.loads((SPEC / name).read_text())


# ---- where calls go -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _spec("url_resolution.json")["cases"], ids=lambda c: f"{c['server']} {c['path']}")
def test_the_python_client_resolves_urls_as_the_spec_says(case):
    client = AgentClient(case["server"], "t" * 20)
    try:
        if case["expect"] is None:
            with pytest.raises(ValueError):
                client.model_path(case["path"])
        else:
            sent_to = client.http.build_request("GET", client.model_path(case["path"])).url
            assert str(sent_to) == case["expect"]
    finally:
        client.close()


# ---- visit orders -------------------------------------------------------------------------------------------
class SwiftPythonRandom:
    """Rounds.swift's `PythonRandom`, transcribed statement by statement (UInt32 wrapping arithmetic as `& M`),
    so its algorithm can be run here; the Swift file and this class are to be read side by side."""

    M = 0xFFFFFFFF

    def __init__(self, seed: int) -> None:
        key, s = [], seed
        while True:  # repeat { key.append(UInt32(truncatingIfNeeded: s)); s >>= 32 } while s != 0
            key.append(s & self.M)
            s >>= 32
            if s == 0:
                break
        mt = [0] * 624
        mt[0] = 19_650_218
        for i in range(1, 624):
            mt[i] = (1_812_433_253 * (mt[i - 1] ^ (mt[i - 1] >> 30)) + i) & self.M
        i, j = 1, 0
        for _ in range(max(624, len(key))):
            mt[i] = ((mt[i] ^ (((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1_664_525) & self.M)) + key[j] + j) & self.M
            i += 1
            j += 1
            if i >= 624:
                mt[0] = mt[623]
                i = 1
            if j >= len(key):
                j = 0
        for _ in range(623):
            mt[i] = ((mt[i] ^ (((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1_566_083_941) & self.M)) - i) & self.M
            i += 1
            if i >= 624:
                mt[0] = mt[623]
                i = 1
        mt[0] = 0x8000_0000
        self.mt, self.index = mt, 624

    def next32(self) -> int:
        mt = self.mt
        if self.index >= 624:
            for k in range(624):
                y = (mt[k] & 0x8000_0000) | (mt[(k + 1) % 624] & 0x7FFF_FFFF)
                mt[k] = mt[(k + 397) % 624] ^ (y >> 1) ^ (0x9908_B0DF if y & 1 else 0)
            self.index = 0
        y = mt[self.index]
        self.index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C_5680
        y ^= (y << 15) & 0xEFC6_0000
        y ^= y >> 18
        return y & self.M

    def below(self, n: int) -> int:
        k = n.bit_length()  # Int.bitWidth - n.leadingZeroBitCount
        r = self.next32() >> (32 - k)
        while r >= n:
            r = self.next32() >> (32 - k)
        return r

    def shuffle(self, x: list[int]) -> None:
        for i in range(len(x) - 1, 0, -1):
            j = self.below(i + 1)
            x[i], x[j] = x[j], x[i]


def _swift_visit_orders(models: int, rounds: int, seed: int) -> list[list[int]]:
    rng, order, out = SwiftPythonRandom(seed), list(range(models)), []
    for _ in range(rounds):
        rng.shuffle(order)
        out.append(list(order))
    return out


def test_the_visit_order_spec_is_what_rounds_py_prints():
    for case in _spec("visit_orders.json")["cases"]:
        assert list(visit_orders(case["models"], case["rounds"], case["seed"])) == case["orders"], case["seed"]


def test_rounds_swift_algorithm_matches_random_random_bit_for_bit():
    """The transcription against CPython itself: every spec case, then seeds across the 32-bit range and past it
    (two key words) with sizes across powers of two (randbelow's rejection), and the raw 32-bit stream."""
    for case in _spec("visit_orders.json")["cases"]:
        assert _swift_visit_orders(case["models"], case["rounds"], case["seed"]) == case["orders"]
    pick = random.Random(21)
    seeds = [0, 1, 2**32 - 1, 2**32, 2**64 - 1] + [pick.getrandbits(pick.choice([8, 32, 33, 64])) for _ in range(40)]
    for seed in seeds:
        models = pick.choice([2, 3, 16, 17, 31, 64, 65, 129, 500])
        assert _swift_visit_orders(models, 3, seed) == list(visit_orders(models, 3, seed)), (seed, models)
        swift, python = SwiftPythonRandom(seed), random.Random(seed)
        assert [swift.next32() for _ in range(700)] == [python.getrandbits(32) for _ in range(700)]


# ---- reporting a batch --------------------------------------------------------------------------------------
SPACE = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["ir_k3_e1", "skip"]}
CONFIG = {"threads": 1, "warmup": 1, "rounds": 4, "runs_per_round": 2}


def _result(job_id: int) -> dict:
    rounds = [100.0, 101.0, 102.0, 103.0]
    return {
        "job_id": job_id, "median_us": statistics.median(rounds), "mean_us": statistics.fmean(rounds),
        "p10_us": min(rounds), "p90_us": max(rounds), "std_us": statistics.stdev(rounds), "n": 8, "rounds": 4,
        "round_medians_us": rounds, "estimator": "median of per-round medians", "context": {"method": "test"},
    }  # fmt: skip


def test_a_whole_batch_422_is_reported_result_by_result_and_only_the_bad_one_fails(tmp_path):
    """The spec's 422 rows, run by the reference agent against a real service: one result breaks the schema, so
    the service refuses the batch's POST whole; each result then goes on its own, the good ones are stored and
    the bad one is reported failed with the service's reason (the iOS app's Reporting.swift does the same)."""
    table = _spec("result_posting.json")
    assert table["batch_post"]["422"] == "post_each_on_its_own"
    assert (table["item_post"]["200"], table["item_post"]["422"]) == ("count_ack", "report_failure")
    db = f"sqlite:///{tmp_path / 's.db'}"
    with running_service(db, tmp_path, DNAS_SERVICE_MAX_ATTEMPTS="1") as svc, svc.client() as admin:
        device = register(admin, "phone")
        run = start_run(admin, device["id"], SPACE, CONFIG)
        client = AgentClient(svc.url, device["agent_token"])
        try:
            batch = client.lease_batch(wait_seconds=0, max_jobs=3)
            jobs = {str(job["job_id"]): job for job in batch["jobs"]}
            results = [_result(int(key)) for key in jobs]
            results[1] |= {"median_us": 999.0, "p90_us": 1000.0}  # not the median of its rounds
            Agent(client, None, cache_dir=tmp_path)._report(batch["lease_token"], jobs, results)
        finally:
            client.close()
        state = admin.get(f"/v1/profiling-runs/{run['id']}").json()
    assert (state["done"], state["failed"]) == (2, 1)
    assert any(
        table["failure_reason_prefix"] in error and "median of round_medians_us" in error for error in state["errors"]
    ), state["errors"]
