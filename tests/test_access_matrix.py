"""Who may call what: every route of the API x every kind of caller -> the status it gets, over real HTTP.

The matrix is written once, below, as data. Its rows must cover every route and method the service's OpenAPI
lists, so a new route without a row fails `test_the_matrix_covers_every_route`: whoever adds a route decides
who may call it here. Each cell sends a valid body, so what a refusal reflects is the token, not the body; a
second test sends every refused cell again with an empty object for a body and still expects the refusal
(the permission check comes before validation: a caller without the right learns nothing about the schema).
A third sends them a body that is not JSON at all: the token is checked before the body is read
(api/gate.py), so a stranger gets 401 and a caller without the right 403, never 422 `json_invalid`.

Callers: no token; a token the service never issued; a reader token; the agent token of device A (whose jobs
the cells use), of device B (another device: A's jobs are not its own) and of a retired device; the admin.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from db.engine import make_engine, make_sessionmaker
from db.models import Job, Measurement
from tests.hwnasbench_data import fbnet_part
from tests.service_harness import Service, register, running_service

ROLES = ("anonymous", "unknown", "reader", "agent_a", "agent_b", "retired", "admin")
UNKNOWN_TOKEN = "dnas_reader_" + "q" * 43  # shaped like a real token, never issued

# fmt: off
#  method  path                                                          anon unkn reader  A    B  retired admin
MATRIX: list[tuple[str, str, tuple[int, ...]]] = [
    ("POST",  "/v1/devices",                                            (401, 401, 403, 403, 403, 403, 201)),
    ("GET",   "/v1/devices",                                            (401, 401, 200, 403, 403, 403, 200)),
    ("GET",   "/v1/devices/{device_id}",                                (401, 401, 200, 403, 403, 403, 200)),
    ("PATCH", "/v1/devices/{device_id}",                                (401, 401, 403, 403, 403, 403, 200)),
    ("POST",  "/v1/devices/{device_id}/rotate-token",                   (401, 401, 403, 403, 403, 403, 200)),
    ("POST",  "/v1/devices/{device_id}/retire",                         (401, 401, 403, 403, 403, 403, 200)),
    ("POST",  "/v1/tokens",                                             (401, 401, 403, 403, 403, 403, 201)),
    ("GET",   "/v1/tokens",                                             (401, 401, 403, 403, 403, 403, 200)),
    ("POST",  "/v1/tokens/{token_id}/revoke",                           (401, 401, 403, 403, 403, 403, 200)),
    ("POST",  "/v1/admin-token/rotate",                                 (401, 401, 403, 403, 403, 403, 200)),
    ("POST",  "/v1/profiling-runs",                                     (401, 401, 403, 403, 403, 403, 201)),
    ("GET",   "/v1/profiling-runs",                                     (401, 401, 200, 403, 403, 403, 200)),
    ("GET",   "/v1/profiling-runs/{run_id}",                            (401, 401, 200, 403, 403, 403, 200)),
    ("POST",  "/v1/profiling-runs/{run_id}/cancel",                     (401, 401, 403, 403, 403, 403, 200)),
    # The agent protocol. B gets nothing of A's: A's job ids are 404 to it, A's lease token holds nothing of
    # B's (409, as a lease that ended), and a batch of A's results is acknowledged `not_found` item by item
    # (checked below). Models are content-addressed operators shared by every device: any agent may fetch one.
    ("PUT",   "/v1/agent/fingerprint",                                  (401, 401, 403, 204, 204, 403, 403)),
    ("PUT",   "/v1/agent/status",                                       (401, 401, 403, 204, 204, 403, 403)),
    ("POST",  "/v1/agent/lease",                                        (401, 401, 403, 200, 204, 403, 403)),
    ("GET",   "/v1/agent/models/{op_key}",                              (401, 401, 403, 200, 200, 403, 403)),
    ("POST",  "/v1/agent/jobs/{job_id}/heartbeat",                      (401, 401, 403, 200, 404, 403, 403)),
    ("POST",  "/v1/agent/heartbeat",                                    (401, 401, 403, 200, 409, 403, 403)),
    ("POST",  "/v1/agent/results",                                      (401, 401, 403, 200, 200, 403, 403)),
    ("POST",  "/v1/agent/jobs/{job_id}/result",                         (401, 401, 403, 200, 404, 403, 403)),
    ("POST",  "/v1/agent/jobs/{job_id}/failure",                        (401, 401, 403, 200, 404, 403, 403)),
    ("GET",   "/v1/devices/{device_id}/latency-tables",                 (401, 401, 200, 403, 403, 403, 200)),
    ("GET",   "/v1/devices/{device_id}/latency-tables/{version}",       (401, 401, 200, 403, 403, 403, 200)),
    ("GET",   "/v1/latency-tables/compare",                             (401, 401, 200, 403, 403, 403, 200)),
    ("POST",  "/v1/latency-tables/import",                              (401, 401, 403, 403, 403, 403, 201)),
    ("POST",  "/v1/devices/{device_id}/network-measurements",           (401, 401, 403, 403, 403, 403, 201)),
    ("GET",   "/v1/devices/{device_id}/network-measurements/{key}",     (401, 401, 200, 403, 403, 403, 200)),
    ("POST",  "/v1/devices/{device_id}/network-sets",                   (401, 401, 403, 403, 403, 403, 201)),
    ("GET",   "/v1/devices/{device_id}/network-sets/{set_id}",          (401, 401, 200, 403, 403, 403, 200)),
    ("POST",  "/v1/devices/{device_id}/calibrations",                   (401, 401, 403, 403, 403, 403, 201)),
    ("GET",   "/v1/devices/{device_id}/calibrations",                   (401, 401, 200, 403, 403, 403, 200)),
    ("GET",   "/v1/devices/{device_id}/calibrations/latest",            (401, 401, 200, 403, 403, 403, 200)),
    ("GET",   "/v1/devices/{device_id}/calibrations/{version}",         (401, 401, 200, 403, 403, 403, 200)),
    ("POST",  "/v1/devices/{device_id}/validations",                    (401, 401, 403, 403, 403, 403, 201)),
    ("GET",   "/v1/devices/{device_id}/validations",                    (401, 401, 200, 403, 403, 403, 200)),
    ("GET",   "/v1/devices/{device_id}/validations/{validation_id}",    (401, 401, 200, 403, 403, 403, 200)),
    ("GET",   "/v1/health",                                             (200, 200, 200, 200, 200, 200, 200)),
    ("GET",   "/v1/health/live",                                        (200, 200, 200, 200, 200, 200, 200)),
    ("GET",   "/v1/metrics",                                            (401, 401, 200, 403, 403, 403, 200)),
]
# fmt: on

CELLS = [(method, path, role, statuses[i]) for method, path, statuses in MATRIX for i, role in enumerate(ROLES)]
REFUSED = [cell for cell in CELLS if cell[3] in (401, 403)]

TINY = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["skip"]}
ARCH = ["skip"] * 22
RESULT = {"median_us": 100.0, "mean_us": 101.0, "p10_us": 95.0, "p90_us": 110.0, "std_us": 5.0, "n": 10}
FIGURES = {"n": 2, "within_5_pct": 1.0, "within_10_pct": 1.0, "mape_pct": 1.0, "worst_error_pct": 1.5,
           "mean_signed_error_pct": 1.0, "kendall_tau": 1.0}  # fmt: skip


@dataclass
class World:
    """The service and what the cells point at: device A with a published table, a held lease, a network, a
    calibration and a validation; device B; a retired device; the callers' tokens."""

    svc: Service
    db_url: str
    tokens: dict[str, str | None]
    device_a: dict[str, Any]
    held: dict[str, Any] = field(default_factory=dict)  # a job A leased and keeps for the whole module
    ids: dict[str, Any] = field(default_factory=dict)
    _names: Iterator[int] = field(default_factory=itertools.count)

    def client(self, role: str) -> httpx.Client:
        token = self.tokens[role]
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.Client(base_url=self.svc.url, headers=headers, timeout=60)

    def name(self, what: str) -> str:
        return f"{what}-{next(self._names)}"

    def admin(self) -> httpx.Client:
        return self.client("admin")

    def disposable_device(self) -> int:
        with self.admin() as admin:
            return register(admin, self.name("spare"))["id"]

    def lease_for_a(self) -> dict[str, Any]:
        """A job of A's leased now (protocol 1), queueing a fresh run for A first if none is runnable."""
        with self.client("agent_a") as agent:
            resp = agent.post("/v1/agent/lease", json={"wait_seconds": 0})
            if resp.status_code == 204:
                self.queue_run_for_a()
                resp = agent.post("/v1/agent/lease", json={"wait_seconds": 0})
            assert resp.status_code == 200, resp.text
            return resp.json()

    def queue_run_for_a(self) -> None:
        """New jobs for A: a run under a measurement config not measured before (so nothing is reused)."""
        self.ids["config_runs"] = self.ids.get("config_runs", 1) + 1
        body = {"device_id": self.device_a["id"], "space": TINY, "anchors": 0,
                "config": {"warmup": self.ids["config_runs"], "rounds": 2, "runs_per_round": 1}}  # fmt: skip
        with self.admin() as admin:
            admin.post("/v1/profiling-runs", json=body).raise_for_status()

    def queued_for_a(self) -> int:
        engine = make_engine(self.db_url)
        with make_sessionmaker(engine)() as s:
            n = s.scalar(select(func.count()).select_from(Job).where(Job.device_id == self.device_a["id"],
                                                                     Job.status == "queued"))  # fmt: skip
        engine.dispose()
        return n or 0


def _publish_a_table(world: World, admin: httpx.Client) -> None:
    """Device A's table version 1, measured by hand over the agent protocol (no agent process: fast)."""
    body = {"device_id": world.device_a["id"], "space": TINY, "anchors": 0,
            "config": {"warmup": 1, "rounds": 2, "runs_per_round": 1}}  # fmt: skip
    run = admin.post("/v1/profiling-runs", json=body).raise_for_status().json()
    with world.client("agent_a") as agent:
        for _ in range(run["total"]):
            job = agent.post("/v1/agent/lease", json={"wait_seconds": 0}).raise_for_status().json()
            proof = {"lease_token": job["lease_token"], **RESULT}
            agent.post(f"/v1/agent/jobs/{job['job_id']}/result", json=proof).raise_for_status()
    assert admin.get(f"/v1/profiling-runs/{run['id']}").json()["status"] == "published"
    world.ids["run_id"] = run["id"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("access-matrix")
    url = f"sqlite:///{work / 'matrix.db'}"
    with running_service(url, work, lease_seconds=600, DNAS_SERVICE_LONG_POLL_SECONDS="0") as svc:
        with svc.client() as admin:
            a, b, old = (register(admin, name) for name in ("phone-a", "phone-b", "phone-retired"))
            admin.post(f"/v1/devices/{old['id']}/retire").raise_for_status()
            reader = admin.post("/v1/tokens", json={"name": "matrix-reader"}).raise_for_status().json()["token"]
            tokens = {"anonymous": None, "unknown": UNKNOWN_TOKEN, "reader": reader, "agent_a": a["agent_token"],
                      "agent_b": b["agent_token"], "retired": old["agent_token"], "admin": svc.admin_token}  # fmt: skip
            world = World(svc, url, tokens, a)
            _publish_a_table(world, admin)
            world.queue_run_for_a()
            world.held = world.lease_for_a()
            net = admin.post(f"/v1/devices/{a['id']}/network-measurements", json={"space": TINY, "arch": ARCH})
            world.ids["network"] = net.raise_for_status().json()
            sets = admin.post(f"/v1/devices/{a['id']}/network-sets", json={"space": TINY, "archs": [ARCH]})
            world.ids["set_id"] = sets.raise_for_status().json()["set"]
            calibration = admin.post(f"/v1/devices/{a['id']}/calibrations", json=_calibration())
            world.ids["calibration"] = calibration.raise_for_status().json()["version"]
            validation = admin.post(f"/v1/devices/{a['id']}/validations", json=_validation())
            world.ids["validation_id"] = validation.raise_for_status().json()["id"]
        yield world


def _calibration() -> dict[str, Any]:
    return {"table_version": 1, "model": {"kind": "family-v1", "factors": {"other": 1.0}, "intercept_us": 0.0}}


def _validation() -> dict[str, Any]:
    rows = [{"arch": ARCH, "predicted_us": 100.0, "measured_us": 101.0},
            {"arch": ARCH, "predicted_us": 200.0, "measured_us": 202.0}]  # fmt: skip
    return {"table_version": 1, "rows": rows, "raw": FIGURES}


Call = tuple[str, dict[str, Any] | None]  # the path with its ids filled in, and the JSON body (None: none)


def _call(world: World, method: str, path: str, allowed: bool) -> Call:
    """The request a cell sends. Where an allowed call changes what other cells rely on (a token, a device,
    the held lease), it gets a target of its own; a refused call changes nothing, so it aims at the shared one."""
    a = world.device_a["id"]
    held = world.held
    params = {"device_id": a, "run_id": world.ids["run_id"], "job_id": held["job_id"], "op_key": held["op_key"],
              "version": 1, "key": world.ids["network"]["key"], "set_id": world.ids["set_id"],
              "validation_id": world.ids["validation_id"]}  # fmt: skip
    proof = {"lease_token": held["lease_token"]}
    body: dict[str, Any] | None = None
    match method, path:
        case "POST", "/v1/devices":
            body = {"name": world.name("new"), "platform": "linux"}
        case "PATCH", "/v1/devices/{device_id}":
            body = {"properties": {"room": "lab"}}
        case "POST", "/v1/devices/{device_id}/rotate-token" | "/v1/devices/{device_id}/retire" if allowed:
            params["device_id"] = world.disposable_device()
        case "POST", "/v1/tokens":
            body = {"name": world.name("minted")}
        case "POST", "/v1/tokens/{token_id}/revoke":
            with world.admin() as admin:
                params["token_id"] = admin.post("/v1/tokens", json={"name": world.name("doomed")}).json()["id"]
        case "POST", "/v1/profiling-runs":
            target = world.disposable_device() if allowed else a
            body = {"device_id": target, "space": TINY, "anchors": 0}
        case "POST", "/v1/profiling-runs/{run_id}/cancel" if allowed:
            with world.admin() as admin:
                run = {"device_id": world.disposable_device(), "space": TINY, "anchors": 0}
                params["run_id"] = admin.post("/v1/profiling-runs", json=run).raise_for_status().json()["id"]
        case "PUT", "/v1/agent/fingerprint":
            body = {"model": "Matrix", "cores": 2}
        case "PUT", "/v1/agent/status":
            body = {"problem": None}
        case "POST", "/v1/agent/lease":
            body = {"wait_seconds": 0}
            if allowed and world.queued_for_a() == 0:
                world.queue_run_for_a()
        case "POST", "/v1/agent/jobs/{job_id}/heartbeat" | "/v1/agent/heartbeat":
            body = proof
        case "POST", "/v1/agent/results" | "/v1/agent/jobs/{job_id}/result" | "/v1/agent/jobs/{job_id}/failure":
            if allowed:  # A's own call settles a lease: one of its own, not the held one
                job = world.lease_for_a()
                params["job_id"], proof = job["job_id"], {"lease_token": job["lease_token"]}
            if path.endswith("/results"):
                body = {**proof, "results": [{"job_id": params["job_id"], **RESULT}]}
            elif path.endswith("/failure"):
                body = {**proof, "reason": "the matrix gives it back"}
            else:
                body = {**proof, **RESULT}
        case "GET", "/v1/latency-tables/compare":
            path = f"{path}?a={a}:1&b={a}:latest"
        case "POST", "/v1/latency-tables/import":  # the file's fbnet part as JSON; a device of its own
            path = f"{path}?hw_device=pixel3&device_name={world.name('imported')}"
            body = fbnet_part() if allowed else None
        case "GET", "/v1/devices/{device_id}/network-measurements/{key}":
            path = f"{path}?config_hash={world.ids['network']['config_hash']}"
        case "POST", "/v1/devices/{device_id}/network-measurements":
            body = {"space": TINY, "arch": ARCH}
        case "POST", "/v1/devices/{device_id}/network-sets":
            body = {"space": TINY, "archs": [ARCH]}
        case "POST", "/v1/devices/{device_id}/calibrations":
            body = _calibration()
        case "GET", "/v1/devices/{device_id}/calibrations/{version}":
            params["version"] = world.ids["calibration"]
        case "POST", "/v1/devices/{device_id}/validations":
            body = _validation()
    if method in ("POST", "PUT", "PATCH") and body is None:
        body = {}  # calls that take no body (retire, rotate, cancel, revoke) get an empty object: harmless
    return path.format(**params), body


def _send(client: httpx.Client, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
    return client.request(method, path, json=body) if body is not None else client.request(method, path)


def _measurements(world: World) -> int:
    engine = make_engine(world.db_url)
    with make_sessionmaker(engine)() as s:
        n = s.scalar(select(func.count()).select_from(Measurement))
    engine.dispose()
    return n or 0


def _schema_routes(svc: Service) -> set[tuple[str, str]]:
    with httpx.Client(base_url=svc.url, timeout=60) as anon:
        spec = anon.get("/openapi.json").raise_for_status().json()
    return {(method.upper(), path) for path, methods in spec["paths"].items() for method in methods}


def test_the_matrix_covers_every_route(world):
    """A route added without a row here fails: someone must decide who may call it."""
    rows = [(method, path) for method, path, _ in MATRIX]
    assert len(rows) == len(set(rows)), "a route has two rows"
    served = _schema_routes(world.svc)
    assert served - set(rows) == set(), f"routes with no row in MATRIX: {sorted(served - set(rows))}"
    assert set(rows) - served == set(), f"rows for routes the service no longer has: {sorted(set(rows) - served)}"


@pytest.mark.parametrize(("method", "path", "role", "expected"), CELLS,
                         ids=[f"{m} {p} as {r}" for m, p, r, _ in CELLS])  # fmt: skip
def test_each_caller_gets_the_status_the_matrix_gives(world, method, path, role, expected):
    url, body = _call(world, method, path, allowed=expected < 400)
    before = _measurements(world)
    with world.client(role) as client:
        resp = _send(client, method, url, body)
    assert resp.status_code == expected, f"{method} {url} as {role}: {resp.status_code} {resp.text[:300]}"
    if path == "/v1/admin-token/rotate" and expected == 200:  # the admin's token is now the new one
        world.tokens["admin"] = resp.json()["token"]
    if expected == 401:  # says how to authenticate, as HTTP asks
        assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer"), resp.headers
    if role == "retired" and expected == 403 and path.startswith("/v1/agent/"):
        assert "retired" in resp.json()["detail"]
    if role == "agent_b" and path == "/v1/agent/results":  # allowed to call, but A's results are not B's
        assert [ack["status"] for ack in resp.json()["acks"]] == ["not_found"]
    if role != "agent_a" and path.startswith("/v1/agent/"):
        assert _measurements(world) == before, "a caller other than A stored a measurement for A's job"


@pytest.mark.parametrize(("method", "path", "role", "expected"), REFUSED,
                         ids=[f"{m} {p} as {r}" for m, p, r, _ in REFUSED])  # fmt: skip
def test_a_refused_caller_is_refused_whatever_the_body(world, method, path, role, expected):
    """The permission check runs before the body is validated: no 422 telling a stranger what the call takes."""
    url, _ = _call(world, method, path, allowed=False)
    with world.client(role) as client:
        resp = _send(client, method, url, {} if method in ("POST", "PUT", "PATCH") else None)
    assert resp.status_code == expected, f"{method} {url} as {role}: {resp.status_code} {resp.text[:300]}"


REFUSED_WITH_BODY = [cell for cell in REFUSED if cell[0] in ("POST", "PUT", "PATCH")]


@pytest.mark.parametrize(("method", "path", "role", "expected"), REFUSED_WITH_BODY,
                         ids=[f"{m} {p} as {r}" for m, p, r, _ in REFUSED_WITH_BODY])  # fmt: skip
def test_a_refused_caller_is_refused_before_the_body_is_read(world, method, path, role, expected):
    """Not JSON, and longer than the small limit: a refusal that read or parsed it would be a 422 or a 413."""
    url, _ = _call(world, method, path, allowed=False)
    junk = b"{not json " + b"x" * (2 << 20)
    with world.client(role) as client:
        resp = client.request(method, url, content=junk, headers={"content-type": "application/json"})
    assert resp.status_code == expected, f"{method} {url} as {role}: {resp.status_code} {resp.text[:300]}"


def test_held_lease_survived_every_refused_call(world):
    """No call by another caller on the agent's paths touches A's held lease: it still heartbeats under A's
    token. The calls are sent here, not left to the matrix above: run alone (or first), this would otherwise
    check a lease nothing had tried to touch."""
    others = [(m, p, r, e) for m, p, r, e in CELLS if p.startswith("/v1/agent/") and r != "agent_a"]
    assert len(others) >= 40
    for method, path, role, expected in others:
        url, body = _call(world, method, path, allowed=expected < 400)
        with world.client(role) as client:
            assert _send(client, method, url, body).status_code == expected, (method, url, role)
    with world.client("agent_a") as agent:
        resp = agent.post("/v1/agent/heartbeat", json={"lease_token": world.held["lease_token"]})
    assert resp.status_code == 200 and resp.json()["extended"] >= 1, resp.text
