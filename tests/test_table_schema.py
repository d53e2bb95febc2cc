"""The published table is one typed model, shared by the service and its clients, and the bytes stay the bytes.

A version's ETag is the SHA-256 of its JSON, fixed at publication, and a search resumes only against the
table with the same content hash: if parsing and dumping a table changed one byte, a cached copy, a saved
file or a resumed search would no longer match. And a client waiting on a run must stop on every final
status, not only the two it expected.
"""

from __future__ import annotations

import hashlib
import json

from search.space.macro import get_space
from search.tables.client import ServiceClient, not_published
from search.tables.predict import PredictionRule
from search.tables.schema import PublishedTable
from tests.service_harness import register, running_service

TINY = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["ir_k3_e1", "skip"]}


def _publish_by_hand(svc, device: dict) -> None:
    """Measure every job of the device's run with chosen numbers (many digits: a rounding shows)."""
    with svc.client(device["agent_token"]) as agent:
        while True:
            job = agent.post("/v1/agent/lease", json={"wait_seconds": 0})
            if job.status_code == 204:
                return
            job = job.raise_for_status().json()
            median = 100.0 + 1.0 / (job["job_id"] + 2.0)
            stats = {"median_us": median, "mean_us": median * 1.0123456789, "p10_us": median * 0.95,
                     "p90_us": median * 1.1, "std_us": median / 7.0, "n": 10}  # fmt: skip
            body = {"lease_token": job["lease_token"], **stats}
            agent.post(f"/v1/agent/jobs/{job['job_id']}/result", json=body).raise_for_status()


def test_a_published_table_parses_into_the_model_and_dumps_to_the_same_bytes(tmp_path):
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path, lease_seconds=600) as svc:
        with svc.client() as admin:
            device = register(admin, "schema-phone")
            body = {"device_id": device["id"], "space": TINY, "anchors": 3,
                    "config": {"warmup": 1, "rounds": 2, "runs_per_round": 1}}  # fmt: skip
            admin.post("/v1/profiling-runs", json=body).raise_for_status()
            _publish_by_hand(svc, device)
            path = f"/v1/devices/{device['id']}/latency-tables/1"
            served = admin.get(path, headers={"Accept-Encoding": "identity"}).raise_for_status()
            openapi = admin.get("/openapi.json").raise_for_status().json()
            # A device nobody measures: its run stays running until an admin cancels it.
            idle = register(admin, "idle-phone")
            run = admin.post("/v1/profiling-runs", json={"device_id": idle["id"], "space": TINY}).raise_for_status()
            admin.post(f"/v1/profiling-runs/{run.json()['id']}/cancel").raise_for_status()
            waited = ServiceClient.over(admin).wait_for_run(run.json()["id"], timeout_s=120, poll_s=0.2)
        fetched = ServiceClient(svc.url, svc.admin_token, cache_dir=tmp_path / "cache").table(device["id"])

    table = PublishedTable.parse(served.content)
    assert table.to_json().encode() == served.content  # byte for byte: the ETag names these bytes
    assert served.headers["etag"] == f'"{hashlib.sha256(table.to_json().encode()).hexdigest()}"'
    assert fetched == table and len(table.prediction.anchors) == 3
    # What a search predicts from the model is what the rule predicts from the raw JSON.
    arch = ["skip", "ir_k3_e1"] * 11
    raw = json.loads(served.content)
    space = get_space("fbnet", **{k: (tuple(v) if k == "candidates" else v) for k, v in TINY.items()})
    medians = {e["key"]: e["median_us"] for e in raw["entries"]}
    assert table.predict_us(arch) == PredictionRule.from_payload(raw).predict(space, arch, medians)
    # The route declares the model, so the API reference and generated clients describe the real table.
    route = openapi["paths"]["/v1/devices/{device_id}/latency-tables/{version}"]["get"]
    assert route["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PublishedTable")
    # The waiter stops on a cancelled run at once, and says there is no table.
    assert waited["status"] == "cancelled"
    assert not_published(waited).startswith(f"run {waited['id']} was cancelled")


def test_a_hand_made_table_keeps_its_numbers_and_its_content_hash():
    """A hand-made file (integers, no content hash, extra fields) reads back as written, and its identity
    is the hash resumed searches were started with before the model existed."""
    space = get_space("fbnet", resolution=32, width=0.25, num_classes=10, candidates=("skip",))
    payload = {"space": space.to_dict(), "entries": [{"key": "k1", "median_us": 100, "note": "by hand"}],
               "lab": {"bench": 3}}  # fmt: skip
    table = PublishedTable.parse(json.dumps(payload))
    assert table.to_dict() == payload and type(table.entries[0].median_us) is int
    legacy = json.dumps({"space": payload["space"], "entries": payload["entries"]}, sort_keys=True)
    assert table.content_hash == hashlib.sha256(legacy.encode()).hexdigest()
    assert table.provenance["prediction_rule"] == "sum"  # no rule published: the plain sum
    # What every prediction needs is worked out once per table, not on every call inside a search loop.
    assert table.space is table.space and table.rule is table.rule and table.medians is table.medians
