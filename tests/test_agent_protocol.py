"""The lease protocol's guarantees, exercised over real HTTP: nothing lost, nothing stored twice, no token in a
log. Who may call what is tests/test_access_matrix.py.

Leases here are long (600 s): a lease ends when a test ends it, by time travel in SQL (tests/leases.py), never
by a wall clock racing a loaded machine."""

import json
import math
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from db.engine import make_engine, make_sessionmaker
from db.models import Job, Measurement, RunOperator
from profiler_service.local_server import stop_process
from profiler_service.security import hash_token
from tests.leases import expire_leases
from tests.service_harness import register, running_service, start_agent, start_run, wait_for_run
from tests.waiting import wait_until

RESULT = {"median_us": 100.0, "mean_us": 101.0, "p10_us": 95.0, "p90_us": 110.0, "std_us": 5.0, "n": 10}
TINY = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["skip"]}


@pytest.fixture
def sqlite_service(tmp_path):
    url = f"sqlite:///{tmp_path / 'service.db'}"
    with running_service(url, tmp_path, lease_seconds=600) as svc:
        svc.db_url = url
        yield svc


def _lease(agent: httpx.Client, wait: float = 0) -> dict:
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


def _drain(agent: httpx.Client, most: int) -> list[dict]:
    """Lease every queued job one at a time (protocol 1); at most `most`, so a service that never runs dry fails."""
    held = []
    for _ in range(most + 1):
        resp = agent.post("/v1/agent/lease", json={"wait_seconds": 0})
        if resp.status_code == 204:
            return held
        assert resp.status_code == 200, resp.text
        held.append(resp.json())
    raise AssertionError(f"more than {most} jobs could be leased")


def test_abandoned_lease_expires_and_the_run_still_completes(sqlite_service, tmp_path):
    svc = sqlite_service
    with svc.client() as admin:
        device = register(admin, "dies-mid-job")
        run = start_run(admin, device["id"])
        with svc.client(device["agent_token"]) as agent:
            abandoned = _lease(agent)  # this agent "dies": it never reports
        assert expire_leases(svc.db_url, job_ids=[abandoned["job_id"]]) == 1  # and its lease runs out
        proc = start_agent(svc, device["agent_token"], tmp_path, "--exit-when-idle", "--wait", "4")
        assert proc.wait(timeout=300) == 0, proc.log_text()[-3000:]
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
        held = _drain(agent, most=200)  # the whole queue, so the next claim can only be an expired lease
        slow = held[-1]
        assert expire_leases(svc.db_url, job_ids=[slow["job_id"]]) == 1
        other = svc.client(device["agent_token"])
        taken = _lease(other, wait=0)
        assert taken["job_id"] == slow["job_id"] and taken["attempt"] == 2
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
            if attempt < 3:  # requeued, it is the oldest runnable job again: the next lease gets it
                again = _lease(agent, wait=0)
                assert again["job_id"] == job["job_id"], (again["job_id"], job["job_id"])
                job = again
        assert reasons == ["queued", "queued", "failed"]
    with svc.client() as admin:
        status = admin.get(f"/v1/profiling-runs/{run['id']}").json()
        assert status["failed"] == 1
        assert any("device offline (3)" in e for e in status["errors"])


def test_a_give_back_requeues_without_spending_an_attempt(sqlite_service):
    """A phone that drops off gives its batch back each time: that must never use up a job's attempts (with
    three outages a plain failure report would have failed the job), and a real failure still counts."""
    svc = sqlite_service
    with svc.client() as admin:
        device = register(admin, "drops-off")
        run = start_run(
            admin, device["id"], space={"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["skip"]}
        )
    with svc.client(device["agent_token"]) as agent:
        job = _lease(agent)
        for outage in range(5):
            assert job["attempt"] == 1, (outage, job["attempt"])
            ack = agent.post(f"/v1/agent/jobs/{job['job_id']}/failure",
                             json={"lease_token": job["lease_token"], "reason": "device unavailable, given back",
                                   "give_back": True})  # fmt: skip
            assert ack.status_code == 200 and ack.json()["status"] == "queued", ack.text
            again = _lease(agent)
            assert again["job_id"] == job["job_id"]
            job = again
        ack = agent.post(f"/v1/agent/jobs/{job['job_id']}/failure",
                         json={"lease_token": job["lease_token"], "reason": "model crashed"})  # fmt: skip
        assert ack.json()["status"] == "queued"
        assert _lease(agent)["attempt"] == 2  # the real failure spent its attempt
    with svc.client() as admin:
        assert admin.get(f"/v1/profiling-runs/{run['id']}").json()["failed"] == 0


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
            detail = resp.json()["detail"]  # FastAPI's list form: loc, msg, ctx
            if why in RESULT:  # a field's own error, located at that field (any detail's text contains "n")
                assert any(isinstance(e, dict) and e.get("loc", [])[-1:] == [why] for e in detail), (why, detail)
            else:
                assert why in json.dumps(detail), (why, detail)
    assert _counts(svc.db_url) == (0, 0)


def httpx_json(body: dict) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


def test_no_token_reaches_the_service_log_or_the_agent_log_with_every_header_logged(tmp_path):
    """Both sides log every HTTP call with its headers (DNAS_SERVICE_LOG_HEADERS, `--log-http`), so a token
    would be in these logs if either side let it through; each credential appears only as its fingerprint."""
    url = f"sqlite:///{tmp_path / 'service.db'}"
    with running_service(url, tmp_path, lease_seconds=600, DNAS_SERVICE_LOG_HEADERS="true") as svc:
        with svc.client() as admin:
            device = register(admin, "logged")
            reader = admin.post("/v1/tokens", json={"name": "ci"}).json()["token"]
            body = {"device_id": device["id"], "space": TINY, "anchors": 0,
                    "config": {"warmup": 1, "rounds": 2, "runs_per_round": 1}}  # fmt: skip
            run = admin.post("/v1/profiling-runs", json=body).raise_for_status().json()
        unknown = "dnas_agent_" + "x" * 43  # a token the service never issued (a typo of a real one, say)
        with svc.client(reader) as r, svc.client(unknown) as u, svc.client(device["agent_token"]) as a:
            assert r.get("/v1/devices").status_code == 200
            assert u.get("/v1/devices").status_code == 401 and a.get("/v1/devices").status_code == 403
        agent = start_agent(svc, device["agent_token"], tmp_path, "--log-http", "--exit-when-idle", "--wait", "1")
        assert agent.wait(timeout=300) == 0, agent.log_text()[-3000:]
        with svc.client() as admin:
            assert wait_for_run(admin, run["id"])["status"] == "published"
            rotated = admin.post(f"/v1/devices/{device['id']}/rotate-token").json()["agent_token"]
        with svc.client(rotated) as a:  # the new token is sent too, so its absence from the log means something
            assert a.post("/v1/agent/lease", json={"wait_seconds": 0}).status_code == 204
        service_log, agent_log = svc.log_text(), agent.log_text()
    tokens = {"admin": svc.admin_token, "reader": reader, "agent": device["agent_token"], "rotated": rotated,
              "unknown": unknown}  # fmt: skip
    for name in ("admin", "reader", "agent", "rotated", "unknown"):  # every caller's header logged, as a fingerprint
        assert f"authorization: Bearer sha256:{hash_token(tokens[name])[:12]}" in service_log, name
    for path in ("/v1/agent/lease", "/v1/agent/results", "/v1/agent/models/"):
        assert f"POST {path}" in agent_log or f"GET {path}" in agent_log, path
    assert f"authorization: Bearer sha256:{hash_token(device['agent_token'])[:12]}" in agent_log
    for name, token in tokens.items():
        assert token not in service_log, f"the {name} token is in the service log"
        assert token not in agent_log, f"the {name} token is in the agent log"
        assert token[-20:] not in service_log + agent_log, f"part of the {name} token is logged"


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
        try:
            wait_until(lambda: _leased_jobs(svc.db_url) > 0, what="the agent to lease its batch", timeout_s=120,
                       alive=[agent])  # fmt: skip
            agent.send_signal(signal.SIGKILL)
            agent.wait()
        finally:
            stop_process(agent, timeout_s=10)  # never outlive the test
        status = admin.get(f"/v1/profiling-runs/{run['id']}").json()
        assert status["status"] == "running" and status["done"] == 0, status
        # The batch's lease runs out; a new agent takes the whole batch again and finishes it.
        assert expire_leases(svc.db_url) == status["total"]
        again = start_agent(svc, device["agent_token"], tmp_path, "--exit-when-idle", "--wait", "4")
        assert again.wait(timeout=300) == 0, again.log_text()[-3000:]
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
        assert all(len(batch) <= 20 for batch in batches)
        # A batch never mixes runs: each job's own run, read from the database (the response's batch_group is
        # one value per batch, copied onto every job above, so it cannot show a mix).
        engine = make_engine(contended_url)
        with make_sessionmaker(engine)() as s:
            group_of = dict(s.execute(select(Job.id, Job.batch_group)).tuples().all())
            op_of = dict(s.execute(select(Job.id, Job.op_key)).tuples().all())
            ops_of_run: dict[int, set[str]] = {}
            for run_id, op_key in s.execute(select(RunOperator.run_id, RunOperator.op_key)).tuples():
                ops_of_run.setdefault(run_id, set()).add(op_key)
        engine.dispose()
        for batch in batches:
            (said,) = {group for _, group in batch}
            assert {group_of[job] for job, _ in batch} == {said}, batch
            run_id = int(said.removeprefix("run:"))
            assert all(op_of[job] in ops_of_run[run_id] for job, _ in batch), batch
        assert len({group for batch in batches for _, group in batch}) == 4  # every run's jobs were leased
