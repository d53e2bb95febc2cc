"""Issue 20: what a stranger, or a client with one bad number, could do to the service over HTTP.

Over real HTTP (uvicorn on loopback), each test one finding: a number that overflows a float crashed the
error page and dropped the connection; bodies were read and parsed before the token was checked; the method
label let anyone add metric series; `LOG_HEADERS` let a path forge log lines and logged unknown secrets.
"""

from __future__ import annotations

import json
import re
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.service_harness import Service, register, running_service

MiB = 1 << 20
OVERFLOWS = ["1e999", "-1e999", "1e400"]


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    work = tmp_path_factory.mktemp("hardening")
    url = f"sqlite:///{work / 'hardening.db'}"
    with running_service(url, work, lease_seconds=600, DNAS_SERVICE_LONG_POLL_SECONDS="0",
                         DNAS_SERVICE_LOG_HEADERS="true") as service:  # fmt: skip
        with service.client() as admin:
            service.device = register(admin, "target")
        yield service


def _json_routes(svc: Service) -> list[tuple[str, str]]:
    """Every operation whose OpenAPI entry takes a JSON body, as tests/test_access_matrix.py derives routes."""
    with httpx.Client(base_url=svc.url, timeout=60) as anon:
        spec = anon.get("/openapi.json").raise_for_status().json()
    return sorted(
        (method.upper(), path)
        for path, methods in spec["paths"].items()
        for method, op in methods.items()
        if "application/json" in op.get("requestBody", {}).get("content", {})
    )


def _port(resp: httpx.Response) -> int:
    """The client's local port: the same port on two responses means the same TCP connection."""
    return resp.extensions["network_stream"].get_extra_info("socket").getsockname()[1]


def _device_json(svc: Service) -> dict[str, Any]:
    with svc.client() as admin:
        return admin.get(f"/v1/devices/{svc.device['id']}").raise_for_status().json()


# ---- 1. a number that overflows ---------------------------------------------------------------------------
def test_a_number_that_overflows_is_a_422_naming_the_field_on_every_json_route_and_keeps_the_connection(svc):
    routes = _json_routes(svc)
    assert len(routes) >= 15, routes  # the spec was read: devices, tokens, runs, agent, networks, fidelity
    for method, path in routes:
        token = svc.device["agent_token"] if path.startswith("/v1/agent/") else svc.admin_token
        url = re.sub(r"\{[a-z_]+\}", "1", path)
        with svc.client(token) as client:
            for number in OVERFLOWS:
                body = f'{{"probe": [1, [2.5, {number}]]}}'
                resp = client.request(method, url, content=body, headers={"content-type": "application/json"})
                where = f"{method} {path} with {number}"
                assert resp.status_code == 422, f"{where}: {resp.status_code} {resp.text[:300]}"
                detail = resp.json()["detail"]
                assert detail[0]["loc"] == ["body", "probe", 1, 1], f"{where}: {detail}"
                assert number in detail[0]["msg"] and "finite" in detail[0]["msg"], f"{where}: {detail}"
                after = client.get("/v1/health/live")
                assert after.status_code == 200, f"{where}: the next request failed"
                assert _port(after) == _port(resp), f"{where}: the connection was dropped after the refusal"


def test_an_overflow_in_free_form_properties_is_refused_not_stored(svc):
    """The second face: no validation error was raised there, so `Infinity` was stored (and served as null)."""
    with svc.client() as admin:
        for number in OVERFLOWS:
            for method, url, body in [
                ("POST", "/v1/devices", f'{{"name": "inf", "platform": "linux", "properties": {{"a": {number}}}}}'),
                ("PATCH", f"/v1/devices/{svc.device['id']}", f'{{"properties": {{"a": [[{number}]]}}}}'),
            ]:
                resp = admin.request(method, url, content=body, headers={"content-type": "application/json"})
                assert resp.status_code == 422, (method, number, resp.status_code, resp.text[:300])
                assert resp.json()["detail"][0]["loc"][:3] == ["body", "properties", "a"]
        names = {d["name"] for d in admin.get("/v1/devices").json()}
    assert "inf" not in names
    assert _device_json(svc)["properties"] == {}


def test_numbers_near_the_limit_are_kept_exactly(svc):
    """Only what overflows is refused: the largest finite double and a tiny one round-trip unchanged."""
    with svc.client() as admin:
        resp = admin.patch(f"/v1/devices/{svc.device['id']}", json={"properties": {"big": 1.7976931348623157e308,
                                                                                  "tiny": 5e-324}})  # fmt: skip
        assert resp.status_code == 200, resp.text
        assert resp.json()["properties"] == {"big": 1.7976931348623157e308, "tiny": 5e-324}
        admin.patch(f"/v1/devices/{svc.device['id']}", json={"properties": {}}).raise_for_status()


# ---- 2.1 the token before the body ------------------------------------------------------------------------
def _send_head(svc: Service, method: str, path: str, headers: dict[str, str], length: int) -> socket.socket:
    """A request whose headers promise `length` bytes of body, of which none is sent."""
    parts = urlsplit(svc.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json",
             f"Content-Length: {length}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]  # fmt: skip
    sock.sendall("\r\n".join(lines).encode())
    return sock


def _status(sock: socket.socket) -> int:
    """The status line of the answer. A server that waits for the body never answers: recv times out,
    which fails the test (30 s); it never passes because of time."""
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return int(head.split(b" ", 2)[1])


@pytest.mark.parametrize("token", ["", "dnas_agent_" + "x" * 43], ids=["no token", "unknown token"])
@pytest.mark.parametrize("path", ["/v1/agent/results", "/v1/devices", "/v1/agent/jobs/1/result"])
def test_a_stranger_is_refused_before_the_body_is_read(svc, token, path):
    """The headers promise 7 MiB (under the results limit); not one byte follows. The 401 must come anyway:
    the service decided without reading, let alone parsing, the body."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with _send_head(svc, "POST", path, headers, 7 * MiB) as sock:
        assert _status(sock) == 401


def test_an_agent_body_past_the_small_limit_is_413_where_results_take_megabytes(svc):
    """Only results carry megabytes (samples of many jobs); other calls are refused at a small limit."""
    agent = svc.device["agent_token"]
    with svc.client(agent) as client:
        fat = {"model": "x", "extra": {"pad": "a" * (2 * MiB)}}
        resp = client.put("/v1/agent/fingerprint", json=fat)
        assert resp.status_code == 413 and "larger than" in resp.json()["detail"], resp.text[:300]
        one = {"median_us": 1.0, "mean_us": 1.0, "p10_us": 1.0, "p90_us": 1.0, "std_us": 0.0, "n": 100_000,
               "samples_us": [123456.789] * 100_000}  # fmt: skip
        lease = {"lease_token": "x" * 16, "results": [{"job_id": i, **one} for i in (1, 2, 3)]}
        assert 2 * MiB < len(json.dumps(lease)) < 8 * MiB
        resp = client.post("/v1/agent/results", json=lease)
        assert resp.status_code == 200, resp.text[:300]  # read and parsed: acknowledged not_found, item by item
        assert [ack["status"] for ack in resp.json()["acks"]] == ["not_found"] * 3
    with svc.client() as admin:
        resp = admin.post("/v1/devices", json={"name": "fat", "platform": "linux", "properties": {"p": "a" * MiB}})
        assert resp.status_code == 413, resp.text[:300]


# ---- 2.2 metric series ------------------------------------------------------------------------------------
def _series(svc: Service) -> set[str]:
    """The label sets of the request metrics (values left out), but for the scrapes themselves."""
    with svc.client() as admin:
        text = admin.get("/v1/metrics").raise_for_status().text
    return {line.rsplit(" ", 1)[0] for line in text.splitlines()
            if line.startswith("dnas_http_request") and 'route="/v1/metrics"' not in line}  # fmt: skip


def test_a_made_up_method_adds_no_metric_series(svc):
    """Without a token, one request with an 8,000-character method added 19 series."""
    with httpx.Client(base_url=svc.url, timeout=60) as anon:
        anon.request("BREW", "/v1/devices")  # the first made-up method may add the "other" series, once
        before = _series(svc)
        for letter in "QZ":
            anon.request(letter * 8000, "/v1/devices")
    after = _series(svc)
    assert after == before, f"made-up methods added series: {sorted(after - before)[:3]}"
    methods = set(re.findall(r'method="([^"]*)"', "\n".join(after)))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, methods


# ---- 2.6 LOG_HEADERS --------------------------------------------------------------------------------------
def test_a_path_cannot_forge_a_log_line_and_unknown_headers_are_masked(svc):
    forged = "2026-12-04 00:00:00,000 INFO [-] dnas.service: admin signed in"
    path = "/v1/health/live%0d%0a" + forged.replace(" ", "%20")
    secret = "sk-live-" + "s3cr3t" * 6
    with httpx.Client(base_url=svc.url, timeout=60) as anon:
        anon.get(path, headers={"X-Api-Key": secret, "X-Request-ID": "forge-check"})
    log = svc.log_text()
    assert not any(line.startswith(forged) for line in log.splitlines()), "the path forged a log line"
    ours = [line for line in log.splitlines() if "[forge-check]" in line and "headers:" in line]
    assert len(ours) == 1 and "\\r\\n" in ours[0], ours
    assert secret not in log and secret[-12:] not in log, "a header value off the allow-list was logged"
    assert "x-api-key: <masked>" in ours[0], ours
    assert "x-request-id: forge-check" in ours[0], ours  # allow-listed headers stay readable
