"""A latency table's CSV says exactly what its JSON says: every op, every statistic, to the last digit.

A search reads the JSON; people and spreadsheets read the CSV. Values with many significant digits (not round
ones a formatter could keep by luck) make a CSV that rounds, drops a row or shifts a column fail here.
"""

from __future__ import annotations

import csv
import io

from profiler_service.tables import STAT_FIELDS
from tests.service_harness import register, running_service

TINY = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["ir_k3_e1", "skip"]}


def _stats(job_id: int) -> dict[str, float | int]:
    median = 100.0 + 1.0 / (job_id + 2.0)  # e.g. 100.33333333333333: rounding anywhere shows
    return {"median_us": median, "mean_us": median * 1.0123456789, "p10_us": median * 0.9512345678,
            "p90_us": median * 1.0987654321, "std_us": median / 7.0, "n": 10 + job_id}  # fmt: skip


def test_csv_has_every_key_and_value_of_the_json(tmp_path):
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path, lease_seconds=600) as svc:
        with svc.client() as admin:
            device = register(admin, "csv-phone")
            body = {"device_id": device["id"], "space": TINY, "anchors": 0,
                    "config": {"warmup": 1, "rounds": 2, "runs_per_round": 1}}  # fmt: skip
            run = admin.post("/v1/profiling-runs", json=body).raise_for_status().json()
        with svc.client(device["agent_token"]) as agent:  # measured by hand: chosen values, no agent process
            for _ in range(run["total"]):
                job = agent.post("/v1/agent/lease", json={"wait_seconds": 0}).raise_for_status().json()
                result = {"lease_token": job["lease_token"], **_stats(job["job_id"])}
                agent.post(f"/v1/agent/jobs/{job['job_id']}/result", json=result).raise_for_status()
        with svc.client() as admin:
            url = f"/v1/devices/{device['id']}/latency-tables/1"
            table = admin.get(url).raise_for_status().json()
            as_csv = admin.get(url, params={"format": "csv"}).raise_for_status()
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(as_csv.text)))
    assert rows[0] == ["key", *STAT_FIELDS]
    entries = table["entries"]
    assert len(entries) >= 2 and len(rows) == len(entries) + 1
    assert len({e["median_us"] for e in entries}) == len(entries)  # distinct values: a shifted row shows
    for row, entry in zip(rows[1:], entries, strict=True):
        assert row[0] == entry["key"]
        for name, text in zip(STAT_FIELDS, row[1:], strict=True):
            value = int(text) if name == "n" else float(text)
            assert value == entry[name] and type(value) is type(entry[name]), (entry["key"], name, text, entry[name])
