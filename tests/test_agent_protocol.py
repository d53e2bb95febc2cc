"""The lease protocol's guarantees, exercised over real HTTP: nothing lost, nothing stored twice, nobody let in."""

import json
import math
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from db.engine import make_engine, make_sessionmaker
from db.models import Job, Measurement
from tests.service_harness import register, running_service, start_agent, start_run, wait_for_run

RESULT = {"median_us": 100.0, "mean_us": 101.0, "p10_us": 95.0, "p90_us": 110.0, "std_us": 5.0, "n": 10}


@pytest.fixture
def sqlite_service(tmp_path):
    url = f"sqlite:///{tmp_path / 'service.db'}"
    with running_service(url, tmp_path, lease_seconds=1.5) as svc:
        svc.db_url = url
        yield svc


def _lease(agent: httpx.Client, wait: float = 5) -> dict:
    resp = agent.post("/v1/agent/lease", json={"wait_seconds": wait})
    assert resp.status_code == 200, resp.text
    return resp.json()


def _counts(db_url: str) -> tuple[int, int]:
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        measurements = s.scalar(select(func.count(Measurement.id)))
        distinct = s.scalar(select(func.count(func.distinct(Measurement.job_id))))
    engine.dispose()
    return measurements, distinct


def test_abandoned_lease_expires_and_the_run_still_completes(sqlite_service, tmp_path):
    svc = sqlite_service
    with svc.client() as admin:
        device = register(admin, "dies-mid-job")
        run = start_run(admin, device["id"])
        with svc.client(device["agent_token"]) as agent:
            abandoned = _lease(agent)  # this agent "dies": it never reports
        proc = start_agent(svc, device["agent_token"], tmp_path, "--exit-when-idle", "--wait", "4")
        assert proc.wait(timeout=300) == 0
        run = wait_for_run(admin, run["id"])
        assert run["status"] == "published" and run["done"] == run["total"]
    engine = make_engine(svc.db_url)
    with make_sessionmaker(engine)() as s:
        job = s.get(Job, abandoned["job_id"])
        assert job.status == "done" and job.attempts == 2
    engine.dispose()
    measurements, distinct = _counts(svc.db_url)
    assert measurements == distinct == run["total"]


def test_replayed_result_is_stored_once_and_stale_tokens_are_refused(sqlite_service):
    svc = sqlite_service
    with svc.client() as admin:
        device = register(admin, "replayer")
        start_run(admin, device["id"])
    with svc.client(device["agent_token"]) as agent:
        job = _lease(agent)
        url = f"/v1/agent/jobs/{job['job_id']}/result"
        first = agent.post(url, json={"lease_token": job["lease_token"], **RESULT})
        replay = agent.post(url, json={"lease_token": job["lease_token"], **RESULT})
        assert first.status_code == replay.status_code == 200
        assert first.json()["replayed"] is False and replay.json()["replayed"] is True
        assert replay.json()["measurement_id"] == first.json()["measurement_id"]
        stale = agent.post(url, json={"lease_token": "0" * 48, **RESULT})
        assert stale.status_code == 409 and "stale" in stale.json()["detail"]

        # A lease that expired and went to another agent: the first agent's late result is refused.
        held = []
        while (resp := agent.post("/v1/agent/lease", json={"wait_seconds": 0})).status_code == 200:
            held.append(resp.json())  # the whole queue, so the next claim can only be an expired lease
        other = svc.client(device["agent_token"])
        taken = _lease(other, wait=10)  # answers once one of the 1.5 s leases has expired
        slow = [h for h in held if h["job_id"] == taken["job_id"]][-1]  # the lease `taken` replaced
        assert taken["lease_token"] != slow["lease_token"]
        late = agent.post(
            f"/v1/agent/jobs/{slow['job_id']}/result", json={"lease_token": slow["lease_token"], **RESULT}
        )
        assert late.status_code == 409
        hb = agent.post(f"/v1/agent/jobs/{slow['job_id']}/heartbeat", json={"lease_token": slow["lease_token"]})
        assert hb.status_code == 409 and "no longer valid" in hb.json()["detail"]
        ok = other.post(f"/v1/agent/jobs/{slow['job_id']}/result", json={"lease_token": taken["lease_token"], **RESULT})
        assert ok.status_code == 200 and ok.json()["replayed"] is False
        other.close()
    measurements, distinct = _counts(svc.db_url)
    assert measurements == distinct


def test_failure_requeues_until_attempts_run_out(sqlite_service):
    svc = sqlite_service
    with svc.client() as admin:
        device = register(admin, "flaky")
        run = start_run(
            admin, device["id"], space={"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["skip"]}
        )
    with svc.client(device["agent_token"]) as agent:
        job = _lease(agent)
        reasons = []
        for attempt in (1, 2, 3):
            assert job["attempt"] == attempt
            ack = agent.post(
                f"/v1/agent/jobs/{job['job_id']}/failure",
                json={"lease_token": job["lease_token"], "reason": f"adb: device offline ({attempt})"},
            )
            assert ack.status_code == 200
            reasons.append(ack.json()["status"])
            if attempt < 3:
                job = next(j for j in iter(lambda: _lease(agent), None) if j["job_id"] == job["job_id"])
        assert reasons == ["queued", "queued", "failed"]
    with svc.client() as admin:
        status = admin.get(f"/v1/profiling-runs/{run['id']}").json()
        assert status["failed"] == 1
        assert any("device offline (3)" in e for e in status["errors"])


def test_bad_results_are_refused_before_any_write(sqlite_service):
    svc = sqlite_service
    with svc.client() as admin:
        device = register(admin, "liar")
        start_run(admin, device["id"])
    with svc.client(device["agent_token"]) as agent:
        job = _lease(agent)
        url = f"/v1/agent/jobs/{job['job_id']}/result"
        for bad, why in [
            ({**RESULT, "median_us": math.nan}, "NaN is not JSON"),  # refused before any field is read
            ({**RESULT, "median_us": -3.0}, "median_us"),
            ({**RESULT, "p90_us": math.inf}, "Infinity is not JSON"),
            ({**RESULT, "p10_us": 500.0}, "p10_us <= median_us <= p90_us"),
            ({**RESULT, "n": 0}, "n"),
            ({k: v for k, v in RESULT.items() if k != "mean_us"}, "mean_us"),
        ]:
            resp = agent.post(
                url,
                content=httpx_json({"lease_token": job["lease_token"], **bad}),
                headers={"content-type": "application/json"},
            )
            assert resp.status_code == 422, (bad, resp.text)
            assert why in json.dumps(resp.json()["detail"])  # FastAPI's list form: loc, msg, ctx
    assert _counts(svc.db_url) == (0, 0)


def httpx_json(body: dict) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


def test_tokens_only_open_their_own_doors(sqlite_service):
    svc = sqlite_service
    with svc.client() as admin:
        a = register(admin, "phone-a")
        b = register(admin, "phone-b")
        start_run(admin, a["id"])
        reader = admin.post("/v1/tokens", json={"name": "search-ci"}).json()["token"]
    with svc.client("") as anon:
        resp = anon.get("/v1/devices")
        assert resp.status_code == 401 and "Authorization: Bearer" in resp.json()["detail"]
    with svc.client(a["agent_token"]) as agent_a, svc.client(b["agent_token"]) as agent_b:
        assert agent_a.post("/v1/devices", json={"name": "x", "platform": "linux"}).status_code == 403
        assert agent_a.get("/v1/devices").status_code == 403
        assert agent_b.post("/v1/agent/lease", json={"wait_seconds": 0}).status_code == 204  # b has no jobs
        job = _lease(agent_a)
        stolen = agent_b.post(
            f"/v1/agent/jobs/{job['job_id']}/result", json={"lease_token": job["lease_token"], **RESULT}
        )
        assert stolen.status_code == 404
    with svc.client(reader) as r:
        assert r.get("/v1/devices").status_code == 200
        assert r.post("/v1/devices", json={"name": "y", "platform": "linux"}).status_code == 403
    with svc.client() as admin:
        assert admin.post(f"/v1/devices/{a['id']}/retire").status_code == 200
    with svc.client(a["agent_token"]) as agent_a:
        resp = agent_a.post("/v1/agent/lease", json={"wait_seconds": 0})
        assert resp.status_code == 403 and "retired" in resp.json()["detail"]
    assert a["agent_token"] not in svc.log_text() and svc.admin_token not in svc.log_text()


def _leased_jobs(db_url: str) -> int:
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        n = s.scalar(select(func.count(Job.id)).where(Job.status == "leased"))
    engine.dispose()
    return n or 0


def test_killed_agent_restarted_completes_the_run_without_doubles(sqlite_service, tmp_path):
    svc = sqlite_service
    with svc.client() as admin:
        device = register(admin, "killed")
        # Long enough rounds that the agent is killed while it measures its batch.
        run = start_run(admin, device["id"], config={"threads": 1, "warmup": 5, "rounds": 20, "runs_per_round": 100})
        agent = start_agent(svc, device["agent_token"], tmp_path, "--wait", "2")
        deadline = time.monotonic() + 120
        while _leased_jobs(svc.db_url) == 0:
            assert agent.poll() is None and time.monotonic() < deadline, "the agent never leased its batch"
            time.sleep(0.05)
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        status = admin.get(f"/v1/profiling-runs/{run['id']}").json()
        assert status["status"] == "running" and status["done"] == 0, status
        # The batch's lease runs out; a new agent takes the whole batch again and finishes it.
        again = start_agent(svc, device["agent_token"], tmp_path, "--exit-when-idle", "--wait", "4")
        assert again.wait(timeout=300) == 0
        run = wait_for_run(admin, run["id"])
        assert run["status"] == "published"
    measurements, distinct = _counts(svc.db_url)
    assert measurements == distinct == run["total"]


@pytest.mark.postgres
def test_fifty_concurrent_leases_two_workers_postgres_never_double_lease(pg_url, tmp_path):
    with running_service(pg_url, tmp_path, workers=2, lease_seconds=600) as svc, svc.client() as admin:
        device = register(admin, "contended")
        run = start_run(admin, device["id"], space={"resolution": 32, "width": 0.25, "num_classes": 10})
        assert run["total"] >= 50

        def lease_once(_: int) -> int | None:
            with httpx.Client(
                base_url=svc.url, headers={"Authorization": f"Bearer {device['agent_token']}"}, timeout=60
            ) as c:
                resp = c.post("/v1/agent/lease", json={"wait_seconds": 0})
                assert resp.status_code in (200, 204), resp.text
                return resp.json()["job_id"] if resp.status_code == 200 else None

        with ThreadPoolExecutor(max_workers=50) as pool:
            got = [j for j in pool.map(lease_once, range(50)) if j is not None]
        assert len(got) == 50
        assert len(set(got)) == len(got)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def contended_url(request, tmp_path):
    return f"sqlite:///{tmp_path / 'c.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")


def test_concurrent_batch_leases_on_two_workers_never_share_a_job(contended_url, tmp_path):
    space = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["ir_k3_e1", "ir_k5_e6", "skip"]}
    with running_service(contended_url, tmp_path, workers=2, lease_seconds=600) as svc, svc.client() as admin:
        device = register(admin, "contended-batches")
        for r in (32, 40, 48, 56):  # four runs (they share a few ops, the classifier among them)
            start_run(admin, device["id"], space={**space, "resolution": r})
        engine = make_engine(contended_url)
        with make_sessionmaker(engine)() as s:
            total = s.scalar(select(func.count(Job.id)))
        engine.dispose()

        def lease_batch(_: int) -> list[tuple[int, str]]:
            with httpx.Client(
                base_url=svc.url, headers={"Authorization": f"Bearer {device['agent_token']}"}, timeout=60
            ) as c:
                resp = c.post("/v1/agent/lease", json={"wait_seconds": 0, "max_jobs": 20, "protocol": 2})
                assert resp.status_code in (200, 204), resp.text
                if resp.status_code == 204:
                    return []
                batch = resp.json()
                return [(j["job_id"], batch["batch_group"]) for j in batch["jobs"]]

        batches: list[list[tuple[int, str]]] = []
        while sum(map(len, batches)) < total:  # every round of 12 concurrent leases takes what is left
            got = [b for b in ThreadPoolExecutor(max_workers=12).map(lease_batch, range(12)) if b]
            assert got, "jobs remain but nothing could be leased"
            batches += got
        ids = [job for batch in batches for job, _ in batch]
        assert len(ids) == len(set(ids)) == total  # each job in exactly one batch
        assert all(len({group for _, group in batch}) == 1 for batch in batches)  # a batch never mixes runs
        assert all(len(batch) <= 20 for batch in batches)
