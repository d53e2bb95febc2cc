"""Bad input from anyone gets a clear 4xx and changes nothing, on SQLite and PostgreSQL.

Each case here was a 500 or a bypass found from outside, over HTTP (issue 11): chunked bodies that skipped
the size limit, digits `int()` could not parse, NaN stored as null, a PATCH that needed a name, wrong tokens
answered 403.
"""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import func, select

from db.engine import make_engine, make_sessionmaker
from db.models import Calibration, Device, Job, Measurement, Operator, ProfilingRun
from tests.service_harness import register, running_service, start_run

MiB = 1 << 20
RESULT = {"median_us": 100.0, "mean_us": 101.0, "p10_us": 95.0, "p90_us": 110.0, "std_us": 5.0, "n": 10}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def svc(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"refusals-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{work / 'refusals.db'}"
    else:
        url = request.getfixturevalue("pg_cluster").create_database(f"refusals_{id(work)}")
    with running_service(url, work, lease_seconds=600, DNAS_SERVICE_LONG_POLL_SECONDS="0") as service:
        service.db_url = url
        service.artifacts = work / "artifacts"
        with service.client() as admin:
            service.device = register(admin, "target")
            start_run(admin, service.device["id"])
        yield service


def _count(db_url: str, model) -> int:  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        n = s.scalar(select(func.count()).select_from(model))
    engine.dispose()
    return n or 0


def _device(db_url: str, device_id: int) -> Device:
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        device = s.get(Device, device_id)
    engine.dispose()
    return device


def _chunks(prefix: bytes, filler: bytes, total: int, suffix: bytes):  # type: ignore[no-untyped-def]
    """A body sent chunked (a generator: no Content-Length), `total` bytes long."""
    yield prefix
    sent = len(prefix) + len(suffix)
    block = filler * (64 * 1024 // len(filler))
    while sent < total:
        part = block[: total - sent]
        sent += len(part)
        yield part
    yield suffix


def _lease(svc) -> dict:  # type: ignore[no-untyped-def]
    with svc.client(svc.device["agent_token"]) as agent:
        resp = agent.post("/v1/agent/lease", json={"wait_seconds": 0})
        assert resp.status_code == 200, resp.text
        return resp.json()


# ---- bodies without Content-Length ------------------------------------------------------------------------
def test_chunked_20_mib_bodies_are_refused_whoever_sends_them_and_nothing_is_stored(svc):
    big = 20 * MiB
    headers = {"content-type": "application/json"}
    job = _lease(svc)
    cases = [
        (svc.device["agent_token"], "PUT", "/v1/agent/fingerprint", b'{"model": "x", "extra": {"pad": "', b'"}}'),
        (svc.device["agent_token"], "POST", f"/v1/agent/jobs/{job['job_id']}/result",
         json.dumps({"lease_token": job["lease_token"], **RESULT})[:-1].encode() + b', "context": {"pad": "',
         b'"}}'),
        (svc.admin_token, "POST", "/v1/devices", b'{"name": "huge", "platform": "linux", "properties": {"p": "',
         b'"}}'),
        ("", "POST", "/v1/devices", b'{"name": "anon", "platform": "linux", "properties": {"p": "', b'"}}'),
    ]  # fmt: skip
    for token, method, path, prefix, suffix in cases:
        with svc.client(token) as client:
            resp = client.request(method, path, content=_chunks(prefix, b"a", big, suffix), headers=headers)
        if not token:  # a stranger is refused before the body is read (tests/test_hardening.py)
            assert resp.status_code == 401, (path, resp.status_code, resp.text[:200])
            continue
        assert resp.status_code == 413, (path, resp.status_code, resp.text[:200])
        assert "larger than" in resp.json()["detail"]
    assert _device(svc.db_url, svc.device["id"]).fingerprint is None
    assert _count(svc.db_url, Measurement) == 0
    with svc.client() as admin:
        names = {d["name"] for d in admin.get("/v1/devices").json()}
    assert names == {"target"}


# ---- 500s found from outside ------------------------------------------------------------------------------
def test_digits_python_accepts_but_int_refuses_are_a_4xx(svc):
    device = svc.device["id"]
    with svc.client() as admin:
        for path, params in [
            (f"/v1/devices/{device}/latency-tables/%C2%B2", {}),  # the superscript two: str.isdigit() says yes
            ("/v1/latency-tables/compare", {"a": "\u00b2:latest", "b": f"{device}:latest"}),
            ("/v1/latency-tables/compare", {"a": f"{device}:\u00b2", "b": f"{device}:latest"}),
        ]:
            resp = admin.get(path, params=params)
            assert resp.status_code in (404, 422), (path, resp.status_code, resp.text)
            assert "detail" in resp.json()
    with svc.client(svc.device["agent_token"]) as agent:
        key = "conv_k3-cin3-cout8-s1-h32-w32-b" + "9" * 5000 + "-float32"  # past Python's int digit limit
        resp = agent.get(f"/v1/agent/models/{key}")
        assert resp.status_code == 404, resp.text[:300]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_everywhere_not_stored_as_null(svc, constant):
    headers = {"content-type": "application/json"}
    agent_token, admin_token = svc.device["agent_token"], svc.admin_token
    job = _lease(svc)
    result = json.dumps({"lease_token": job["lease_token"], **RESULT})[:-1] + f', "context": {{"t": {constant}}}}}'
    cases = [
        (agent_token, "PUT", "/v1/agent/fingerprint", f'{{"model": "x", "extra": {{"t": {constant}}}}}'),
        (agent_token, "POST", f"/v1/agent/jobs/{job['job_id']}/result", result),
        (agent_token, "POST", "/v1/agent/results",
         json.dumps({"lease_token": job["lease_token"], "results": [{"job_id": job["job_id"], **RESULT}]})[:-3]
         + f', "context": {{"t": [1, {constant}]}}}}]}}'),
        (admin_token, "POST", "/v1/devices",
         f'{{"name": "nan", "platform": "linux", "properties": {{"t": {constant}}}}}'),
        (admin_token, "PATCH", f"/v1/devices/{svc.device['id']}", f'{{"properties": {{"t": {constant}}}}}'),
    ]  # fmt: skip
    for token, method, path, body in cases:
        with svc.client(token) as client:
            resp = client.request(method, path, content=body.encode(), headers=headers)
        assert resp.status_code == 422, (path, resp.status_code, resp.text[:300])
        detail = resp.json()["detail"]
        assert isinstance(detail, list) and constant.lstrip("-") in json.dumps(detail), detail
    device = _device(svc.db_url, svc.device["id"])
    assert device.fingerprint is None and device.properties == {}
    assert _count(svc.db_url, Measurement) == 0


def test_strings_the_database_cannot_store_are_refused(svc):
    """PostgreSQL refuses NUL characters in text and unpaired surrogates in any encoding."""
    headers = {"content-type": "application/json"}
    job = _lease(svc)
    with svc.client(svc.device["agent_token"]) as agent:
        for body in ('{"model": "a\\u0000b"}', '{"model": "a\\ud800b"}', '{"extra": {"\\u0000": 1}}'):
            resp = agent.put("/v1/agent/fingerprint", content=body.encode(), headers=headers)
            assert resp.status_code == 422, (body, resp.text)
        body = {"lease_token": job["lease_token"], "reason": "adb said \u0000"}
        resp = agent.post(f"/v1/agent/jobs/{job['job_id']}/failure", json=body)
        assert resp.status_code == 422, resp.text
    assert _device(svc.db_url, svc.device["id"]).fingerprint is None


def test_context_and_free_form_fields_are_capped(svc):
    job = _lease(svc)
    with svc.client(svc.device["agent_token"]) as agent:
        body = {"lease_token": job["lease_token"], **RESULT, "context": {"pad": "x" * (65 * 1024)}}
        resp = agent.post(f"/v1/agent/jobs/{job['job_id']}/result", json=body)
        assert resp.status_code == 422 and "64 KiB" in json.dumps(resp.json()["detail"]), resp.text[:300]
        resp = agent.put("/v1/agent/fingerprint", json={"extra": {"pad": "x" * (17 * 1024)}})
        assert resp.status_code == 422 and "16 KiB" in json.dumps(resp.json()["detail"])
    assert _count(svc.db_url, Measurement) == 0


def test_patch_with_only_properties(svc):
    with svc.client() as admin:
        resp = admin.patch(f"/v1/devices/{svc.device['id']}", json={"properties": {"rack": "b2"}})
        assert resp.status_code == 200, resp.text
        assert resp.json()["properties"] == {"rack": "b2"} and resp.json()["name"] == "target"
        resp = admin.patch(f"/v1/devices/{svc.device['id']}", json={"properties": {}})
        assert resp.status_code == 200 and resp.json()["properties"] == {}


def test_a_wrong_token_is_401_and_a_valid_token_without_the_right_is_403(svc):
    with svc.client() as admin:
        reader = admin.post("/v1/tokens", json={"name": "ci"}).json()["token"]
    for token in ("", "not-a-token", "dnas_read_" + "x" * 43):
        with svc.client(token) as client:
            for method, path in (("GET", "/v1/devices"), ("POST", "/v1/tokens"), ("POST", "/v1/agent/lease")):
                resp = client.request(method, path, json={"name": "x"} if path == "/v1/tokens" else {})
                assert resp.status_code == 401, (token, path, resp.status_code)
                assert resp.headers["www-authenticate"].startswith("Bearer"), resp.headers
    with svc.client(reader) as client:
        assert client.post("/v1/tokens", json={"name": "x"}).status_code == 403
        assert client.post("/v1/agent/lease", json={}).status_code == 403
    with svc.client(svc.device["agent_token"]) as client:
        assert client.get("/v1/devices").status_code == 403


def test_a_space_over_the_op_budget_is_refused_before_anything_is_exported_or_stored(svc):
    """An op beyond the service's budget (profiler_service/runs.py MAX_OP_MACS, MAX_OP_ELEMENTS) would tie a
    worker up exporting it for minutes: refused with the op named, and no run, job, operator or file made."""
    rows = {model: _count(svc.db_url, model) for model in (ProfilingRun, Job, Operator)}
    files = sorted(svc.artifacts.rglob("*.onnx"))
    body = {"device_id": svc.device["id"], "space": {"resolution": 1024, "width": 4.0, "num_classes": 10}}
    with svc.client() as admin:
        resp = admin.post("/v1/profiling-runs", json=body)
    assert resp.status_code == 422, resp.text[:300]
    assert "G multiply-adds, above the 4 G limit" in resp.json()["detail"], resp.text[:300]
    assert {model: _count(svc.db_url, model) for model in rows} == rows
    assert files and sorted(svc.artifacts.rglob("*.onnx")) == files  # the fixture's run exported some


def test_validation_errors_keep_fastapis_list_form_with_a_request_id(svc):
    with svc.client() as admin:
        resp = admin.post("/v1/devices", json={"name": "", "platform": "beos", "surprise": 1})
    assert resp.status_code == 422
    body = resp.json()
    fields = {tuple(e["loc"]) for e in body["detail"]}
    assert {("body", "name"), ("body", "platform"), ("body", "surprise")} <= fields
    assert body["request_id"] == resp.headers["x-request-id"]


def test_concurrent_calibrations_each_get_their_own_version(svc):
    """Two admins storing a calibration at once raced on the version number (IntegrityError, a 500)."""
    from concurrent.futures import ThreadPoolExecutor

    from db.models import LatencyTable

    engine = make_engine(svc.db_url)
    with make_sessionmaker(engine)() as s:
        table = s.scalar(select(LatencyTable).where(LatencyTable.device_id == svc.device["id"]))
    engine.dispose()
    if table is None:  # publish a table by answering every job of the run
        _answer_everything(svc)
    body = {"table_version": 1, "model": {"kind": "linear", "scale": 1.0, "offset_us": 0.0}}

    def post(_: int) -> int:
        with httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {svc.admin_token}"}, timeout=60) as c:
            return c.post(f"/v1/devices/{svc.device['id']}/calibrations", json=body).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(post, range(16)))
    assert codes == [201] * 16, codes
    engine = make_engine(svc.db_url)
    with make_sessionmaker(engine)() as s:
        versions = sorted(s.scalars(select(Calibration.version).where(Calibration.device_id == svc.device["id"])))
    engine.dispose()
    assert versions == list(range(1, 17))


def _answer_everything(svc) -> None:  # type: ignore[no-untyped-def]
    with svc.client(svc.device["agent_token"]) as agent:
        while (
            resp := agent.post("/v1/agent/lease", json={"wait_seconds": 0, "max_jobs": 1000, "protocol": 2})
        ).status_code == 200:
            batch = resp.json()
            results = [{"job_id": j["job_id"], **RESULT} for j in batch["jobs"]]
            assert (
                agent.post(
                    "/v1/agent/results", json={"lease_token": batch["lease_token"], "results": results}
                ).status_code
                == 200
            )
        # Jobs leased earlier by other tests of this module (lease_seconds=600) are answered under their tokens.
    engine = make_engine(svc.db_url)
    from db.models import Job

    with make_sessionmaker(engine)() as s:
        held = list(s.execute(select(Job.id, Job.lease_token).where(Job.status == "leased")))
    engine.dispose()
    with svc.client(svc.device["agent_token"]) as agent:
        for job_id, token in held:
            agent.post(f"/v1/agent/jobs/{job_id}/result", json={"lease_token": token, **RESULT})
    with svc.client() as admin:
        runs = admin.get("/v1/profiling-runs", params={"device_id": svc.device["id"]})
        run_id = runs.json()[0]["id"] if runs.status_code == 200 else 1
        from tests.service_harness import wait_for_run

        assert wait_for_run(admin, run_id, timeout_s=60)["status"] == "published"
