"""What a team running the service needs: pages, token management, health, metrics, request ids, immutable
table bytes, and agents that only ever send their token to their own server."""

from __future__ import annotations

import gzip
import hashlib
import re

import httpx
import pytest

from device_agents.client import AgentClient
from profiler_service.settings import ServiceSettings
from tests.service_harness import register, running_service, wait_for_run

RESULT = {"median_us": 100.0, "mean_us": 101.0, "p10_us": 95.0, "p90_us": 110.0, "std_us": 5.0, "n": 10}
TINY = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["skip"]}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    work = tmp_path_factory.mktemp("ops")
    with running_service(f"sqlite:///{work / 'ops.db'}", work, DNAS_SERVICE_LONG_POLL_SECONDS="0") as service:
        yield service


def _publish(svc, admin: httpx.Client, device: dict) -> dict:  # type: ignore[no-untyped-def]
    run = admin.post("/v1/profiling-runs", json={"device_id": device["id"], "space": TINY, "anchors": 0,
                                                 "config": {"warmup": 1, "runs": 5}}).json()  # fmt: skip
    with svc.client(device["agent_token"]) as agent:
        while (resp := agent.post("/v1/agent/lease", json={"max_jobs": 1000, "protocol": 2})).status_code == 200:
            batch = resp.json()
            for job in batch["jobs"]:
                assert job["model_url"].startswith("/v1/agent/models/")  # a path, never a URL from the Host header
            results = [{"job_id": j["job_id"], **RESULT} for j in batch["jobs"]]
            body = {"lease_token": batch["lease_token"], "results": results}
            assert agent.post("/v1/agent/results", json=body).status_code == 200
    return wait_for_run(admin, run["id"], timeout_s=60)


def test_every_list_pages_with_a_next_link(svc):
    with svc.client() as admin:
        ids = [register(admin, f"page-{i}")["id"] for i in range(5)]
        for i in range(3):
            admin.post("/v1/tokens", json={"name": f"t{i}"})
        seen, url = [], "/v1/devices?limit=2"
        while url:
            resp = admin.get(url)
            assert resp.status_code == 200
            seen += [d["id"] for d in resp.json()]
            link = resp.headers.get("link")
            url = re.fullmatch(r'<(.+)>; rel="next"', link)[1] if link else None
        assert ids == [i for i in seen if i in ids] and len(seen) == len(set(seen))
        assert len(admin.get("/v1/tokens", params={"limit": 2}).json()) == 2
        assert admin.get("/v1/devices", params={"limit": 0}).status_code == 422
        assert admin.get("/v1/profiling-runs", params={"limit": 1001}).status_code == 422


def test_reader_tokens_are_listed_and_revoked_and_agent_tokens_rotated(svc):
    with svc.client() as admin:
        minted = admin.post("/v1/tokens", json={"name": "search-ci"}).json()
        listed = admin.get("/v1/tokens").json()
        assert any(t["id"] == minted["id"] and t["name"] == "search-ci" for t in listed)
        assert all("token" not in t for t in listed)  # only the hash is kept
        with svc.client(minted["token"]) as reader:
            assert reader.get("/v1/devices").status_code == 200
            revoked = admin.post(f"/v1/tokens/{minted['id']}/revoke")
            assert revoked.status_code == 200 and revoked.json()["revoked_at"]
            assert reader.get("/v1/devices").status_code == 401
        assert minted["id"] not in [t["id"] for t in admin.get("/v1/tokens").json()]
        assert minted["id"] in [t["id"] for t in admin.get("/v1/tokens", params={"include_revoked": True}).json()]

        device = register(admin, "rotating")
        rotated = admin.post(f"/v1/devices/{device['id']}/rotate-token").json()
        assert rotated["agent_token"] != device["agent_token"]
        with svc.client(device["agent_token"]) as old, svc.client(rotated["agent_token"]) as new:
            assert old.put("/v1/agent/fingerprint", json={}).status_code == 401
            assert new.put("/v1/agent/fingerprint", json={}).status_code == 204


def test_health_metrics_and_request_ids(svc):
    assert httpx.get(f"{svc.url}/v1/health/live").json() == {"status": "ok"}
    ready = httpx.get(f"{svc.url}/v1/health")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"
    assert httpx.get(f"{svc.url}/v1/metrics").status_code == 401
    with svc.client() as admin:
        device = register(admin, "metered")
        admin.post("/v1/profiling-runs", json={"device_id": device["id"], "space": TINY, "anchors": 0})
        text = admin.get("/v1/metrics").text
        assert re.search(r'dnas_http_requests_total\{method="POST",route="/v1/devices",status="201"\} [1-9]', text)
        assert 'dnas_http_request_duration_seconds_bucket{le="0.1",method="POST",route="/v1/devices"}' in text
        assert re.search(r'dnas_jobs\{status="queued"\} [1-9]', text)
        assert 'dnas_leases{state="live"}' in text and 'dnas_profiling_runs{status="running"}' in text

        mine = admin.get("/v1/devices/999999", headers={"X-Request-ID": "ticket-4711"})
        assert mine.status_code == 404 and mine.json()["request_id"] == "ticket-4711"
        assert mine.headers["x-request-id"] == "ticket-4711"
        theirs = admin.get("/v1/devices/999998", headers={"X-Request-ID": "bad id with spaces"})
        assert re.fullmatch(r"[0-9a-f]{32}", theirs.json()["request_id"])  # an unsafe id is replaced
    log = svc.log_text()
    assert re.search(r"\[ticket-4711\] uvicorn\.access: .*GET /v1/devices/999999 HTTP/1.1\" 404", log), log[-2000:]


def test_a_versions_bytes_and_etag_never_change_and_gzip_is_served_from_memory(svc):
    with svc.client() as admin:
        device = register(admin, "renamed-later")
        assert _publish(svc, admin, device)["status"] == "published"
        url = f"/v1/devices/{device['id']}/latency-tables/1"
        raw = httpx.get(svc.url + url, headers={"Authorization": f"Bearer {svc.admin_token}",
                                                "Accept-Encoding": "identity"})  # fmt: skip
        assert "content-encoding" not in raw.headers
        assert raw.headers["etag"] == f'"{hashlib.sha256(raw.content).hexdigest()}"'
        assert raw.headers["cache-control"] == "private, max-age=31536000, immutable"
        with httpx.stream("GET", svc.url + url, headers={"Authorization": f"Bearer {svc.admin_token}",
                                                          "Accept-Encoding": "gzip"}) as zipped:  # fmt: skip
            compressed = b"".join(zipped.iter_raw())
            assert zipped.headers["content-encoding"] == "gzip" and zipped.headers["vary"] == "Accept-Encoding"
            assert zipped.headers["etag"] == "W/" + raw.headers["etag"]
        assert gzip.decompress(compressed) == raw.content and len(compressed) < len(raw.content) / 3

        # A version is immutable, the device's name included: renaming the device changes none of its bytes.
        assert admin.patch(f"/v1/devices/{device['id']}", json={"name": "renamed-now"}).status_code == 200
        again = admin.get(url, headers={"If-None-Match": raw.headers["etag"]})
        assert again.status_code == 304
        assert admin.get(url).json()["device"]["name"] == "renamed-later"
        assert admin.get(f"/v1/devices/{device['id']}").json()["name"] == "renamed-now"
        listed = admin.get(f"/v1/devices/{device['id']}/latency-tables").json()
        assert listed[0]["etag"] == raw.headers["etag"].strip('"') and listed[0]["entries"] > 0


def test_an_agent_resolves_model_paths_on_its_own_server_and_refuses_other_hosts():
    client = AgentClient("https://dnas.example.org:8443/api", "t")
    assert client.model_path("/v1/agent/models/x") == "/v1/agent/models/x"
    assert client.model_path("https://dnas.example.org:8443/api/v1/agent/models/x") == "/v1/agent/models/x"
    for elsewhere in ("http://dnas.example.org:8443/api/v1/agent/models/x",  # the proxy's plain-http Host
                      "https://evil.example.com/v1/agent/models/x", "https://dnas.example.org/v1/agent/models/x",
                      "v1/agent/models/x"):  # fmt: skip
        with pytest.raises(ValueError):
            client.model_path(elsewhere)
    client.close()


@pytest.mark.parametrize("token", ["short-token", "change-me-to-a-long-random-string", "x" * 31])
def test_weak_admin_tokens_are_refused(token):
    with pytest.raises(ValueError, match="DNAS_SERVICE_ADMIN_TOKEN"):
        ServiceSettings(admin_token=token)
    assert ServiceSettings(admin_token="k" * 32).admin_token == "k" * 32


def test_every_api_route_parses_strict_json(tmp_path):
    """The strict parser is a route class: a new endpoint on a router that forgot it would accept NaN again."""
    from fastapi.routing import iter_route_contexts

    from profiler_service.api.strict_json import StrictJsonRoute
    from profiler_service.app import create_app

    app = create_app(ServiceSettings(database_url=f"sqlite:///{tmp_path / 'x.db'}", artifact_dir=tmp_path))
    api = [ctx for ctx in iter_route_contexts(app.routes) if (ctx.path or "").startswith("/v1")]
    assert len(api) >= 30
    assert [ctx.path for ctx in api if not isinstance(ctx.original_route, StrictJsonRoute)] == []
