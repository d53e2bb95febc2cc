"""Protocol 2 over real HTTP: a run leased as one batch under one token, one heartbeat for all, one POST of
results answered item by item; protocol 1 keeps working beside it."""

import statistics

import pytest

from search.tables.predict import N_ANCHORS
from tests.service_harness import register, running_service, start_agent, start_run

SPACE_A = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["ir_k3_e1", "skip"]}
SPACE_B = {"resolution": 40, "width": 0.25, "num_classes": 10, "candidates": ["ir_k3_e1", "skip"]}
CONFIG = {"threads": 1, "warmup": 1, "rounds": 4, "runs_per_round": 2}


def _result(job_id: int, base: float = 100.0) -> dict:
    rounds = [base + i for i in range(4)]
    median = statistics.median(rounds)
    return {
        "job_id": job_id, "median_us": median, "mean_us": statistics.fmean(rounds), "p10_us": min(rounds),
        "p90_us": max(rounds), "std_us": statistics.stdev(rounds), "n": 8, "rounds": 4, "round_medians_us": rounds,
        "estimator": "median of per-round medians", "context": {"method": "test"},
    }  # fmt: skip


@pytest.fixture
def svc(tmp_path):
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path, lease_seconds=30) as service:
        yield service


def test_a_run_is_leased_as_one_batch_and_reported_in_one_call(svc):
    with svc.client() as admin:
        device = register(admin, "batched")
        run_a = start_run(admin, device["id"], SPACE_A, CONFIG)
        run_b = start_run(admin, device["id"], SPACE_B, CONFIG)
        with svc.client(device["agent_token"]) as agent:
            batch = agent.post("/v1/agent/lease", json={"wait_seconds": 0, "max_jobs": 500, "protocol": 2}).json()
            # Every job of the first run, nothing of the second, under one token, with the rounds to measure.
            assert len(batch["jobs"]) == run_a["total"] and batch["batch_group"] == f"run:{run_a['id']}"
            assert {j["lease_token"] for j in batch["jobs"]} == {batch["lease_token"]}
            assert (batch["config"]["rounds"], batch["config"]["runs_per_round"]) == (4, 2)
            kinds = {j["op_spec"]["kind"] for j in batch["jobs"]}
            assert {"probe", "network", "ir", "conv"} <= kinds
            assert admin.get(f"/v1/devices/{device['id']}").json()["agent_protocol"] == 2

            beat = agent.post("/v1/agent/heartbeat", json={"lease_token": batch["lease_token"]})
            assert beat.status_code == 200 and beat.json()["extended"] == run_a["total"]

            ids = [j["job_id"] for j in batch["jobs"]]
            # One inconsistent item (median_us is not the median of its rounds) refuses the whole POST.
            bad = _result(ids[0]) | {"median_us": 999.0, "p90_us": 1000.0}
            refused = agent.post("/v1/agent/results", json={"lease_token": batch["lease_token"], "results": [bad]})
            assert refused.status_code == 422 and "median of round_medians_us" in refused.text
            assert admin.get(f"/v1/profiling-runs/{run_a['id']}").json()["done"] == 0

            body = {"lease_token": batch["lease_token"], "results": [_result(i) for i in ids]}
            acks = agent.post("/v1/agent/results", json=body).json()["acks"]
            assert [a["status"] for a in acks] == ["done"] * len(ids) and not any(a["replayed"] for a in acks)
            # The response was lost, the agent posts again: answered the same, stored once.
            again = agent.post("/v1/agent/results", json=body).json()["acks"]
            assert all(a["status"] == "done" and a["replayed"] for a in again)
            assert [a["measurement_id"] for a in again] == [a["measurement_id"] for a in acks]

            published = admin.get(f"/v1/profiling-runs/{run_a['id']}").json()
            assert published["status"] == "published" and published["done"] == run_a["total"]
            table = admin.get(f"/v1/devices/{device['id']}/latency-tables/latest").json()
            assert table["prediction"]["rule"] == "overhead-v2" and len(table["prediction"]["anchors"]) == N_ANCHORS

            # The next batch is the second run; nothing held under the finished token any more.
            nxt = agent.post("/v1/agent/lease", json={"wait_seconds": 0, "max_jobs": 500, "protocol": 2}).json()
            assert nxt["batch_group"] == f"run:{run_b['id']}" and nxt["lease_token"] != batch["lease_token"]
            gone = agent.post("/v1/agent/heartbeat", json={"lease_token": batch["lease_token"]})
            assert gone.status_code == 409


def test_batch_results_are_answered_item_by_item(svc):
    with svc.client() as admin:
        mine, other = register(admin, "mine"), register(admin, "other")
        start_run(admin, mine["id"], SPACE_A, CONFIG)
        start_run(admin, other["id"], SPACE_A, CONFIG)
        with svc.client(mine["agent_token"]) as agent, svc.client(other["agent_token"]) as other_agent:
            batch = agent.post("/v1/agent/lease", json={"wait_seconds": 0, "max_jobs": 3, "protocol": 2}).json()
            assert len(batch["jobs"]) == 3  # max_jobs honoured
            theirs = other_agent.post("/v1/agent/lease", json={"wait_seconds": 0, "max_jobs": 1, "protocol": 2})
            their_job = theirs.json()["jobs"][0]["job_id"]
            ids = [j["job_id"] for j in batch["jobs"]]
            body = {"lease_token": batch["lease_token"], "results": [_result(ids[0]), _result(their_job)]}
            acks = agent.post("/v1/agent/results", json=body).json()["acks"]
            assert [a["status"] for a in acks] == ["done", "not_found"]
            # A stale token: the remaining jobs were given back and leased again under a new token.
            for job_id in ids[1:]:
                agent.post(f"/v1/agent/jobs/{job_id}/failure", json={"lease_token": batch["lease_token"],
                                                                      "reason": "giving back"})  # fmt: skip
            agent.post("/v1/agent/lease", json={"wait_seconds": 0, "max_jobs": 10, "protocol": 2})
            late = {"lease_token": batch["lease_token"], "results": [_result(ids[1])]}
            assert agent.post("/v1/agent/results", json=late).json()["acks"][0]["status"] == "conflict"


def test_single_job_agents_keep_protocol_1(svc):
    with svc.client() as admin:
        device = register(admin, "old-agent")
        run = start_run(admin, device["id"], SPACE_A, CONFIG)
        with svc.client(device["agent_token"]) as agent:
            job = agent.post("/v1/agent/lease", json={"wait_seconds": 0}).json()
            assert "jobs" not in job and job["config"]["runs"] == 8  # a block of rounds x runs_per_round
            # The protocol-1 body: statistics of one block, every timed run, no rounds.
            samples = [100.0, 101.0, 99.0, 102.0, 98.0, 100.5, 99.5, 101.5]
            result = {"median_us": 100.25, "mean_us": 100.19, "p10_us": 98.7, "p90_us": 101.65, "std_us": 1.3,
                      "n": 8, "samples_us": samples, "context": {"method": "block"}}  # fmt: skip
            ack = agent.post(f"/v1/agent/jobs/{job['job_id']}/result", json={"lease_token": job["lease_token"],
                                                                            **result})  # fmt: skip
            assert ack.status_code == 200 and ack.json()["status"] == "done"
        assert admin.get(f"/v1/devices/{device['id']}").json()["agent_protocol"] == 1
        assert admin.get(f"/v1/profiling-runs/{run['id']}").json()["done"] == 1


def test_a_model_the_agent_cannot_fetch_fails_alone(tmp_path):
    # An artifact folder of its own, seeded with nothing (tests/artifact_cache.py): a shared one also holds other
    # tests' networks, and deleting one of those left this run whole (seen under pytest-xdist).
    own = tmp_path / "own-artifacts"
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path, lease_seconds=30,
                         DNAS_SERVICE_ARTIFACT_DIR=str(own)) as svc, svc.client() as admin:  # fmt: skip
        device = register(admin, "missing-model")
        run = start_run(admin, device["id"], SPACE_A, CONFIG)
        # An anchor network's file vanishes from the service's artifacts: its download answers 404.
        victim = next((own / "networks").glob("net-*.onnx"))
        victim.unlink()
        agent = start_agent(svc, device["agent_token"], tmp_path, "--exit-when-idle", "--wait", "1")
        assert agent.wait(timeout=300) == 0
        status = admin.get(f"/v1/profiling-runs/{run['id']}").json()
        # Every other job of the batch was measured; the one model failed with the download's reason.
        assert status["done"] == run["total"] - 1 and status["failed"] == 1, status
        assert victim.stem in status["errors"][0] and "model download" in status["errors"][0]
