"""The dashboard's rules over plain HTTP (no browser needed): sessions, CSRF, who may do what, the headers every
page carries, and the API endpoints the fidelity page reads (validation reports, calibrations). The service is
real (uvicorn on loopback) and its one table is measured by a real local agent."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from db.engine import make_engine
from tests.service_harness import Service, register, running_service, start_agent
from tests.waiting import wait_until

SPACE = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["ir_k3_e1", "skip"]}
CONFIG = {"warmup": 1, "rounds": 4, "runs_per_round": 1}
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
ENDED = "why=ended"  # the sign-in form's reason for an ended session (a key: the form shows its fixed text)


@dataclass
class Site:
    svc: Service
    reader: str
    device: dict[str, Any]
    run_id: int
    db: str

    @property
    def url(self) -> str:
        return self.svc.url

    def bearer(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def site(request, tmp_path_factory) -> Iterator[Site]:
    """The dashboard's queries (live leases grouped by device, newest runs, joins to table versions) on both."""
    work = tmp_path_factory.mktemp(f"dashboard-http-{request.param}")
    if request.param == "sqlite":
        db = f"sqlite:///{work / 'ui.db'}"
    else:
        db = request.getfixturevalue("pg_cluster").create_database(f"ui_{os.getpid()}")
    with running_service(db, work, DNAS_SERVICE_LONG_POLL_SECONDS="2") as svc, svc.client() as admin:
        admin.timeout = httpx.Timeout(600)  # creating a run exports its models: minutes on a loaded 2-core host
        reader = admin.post("/v1/tokens", json={"name": "http-reader"}).raise_for_status().json()["token"]
        device = register(admin, "http-host")
        body = {"device_id": device["id"], "space": SPACE, "config": CONFIG, "anchors": 2}
        run = admin.post("/v1/profiling-runs", json=body).raise_for_status().json()
        agent = start_agent(svc, device["agent_token"], work)
        try:
            wait_until(lambda: admin.get(f"/v1/profiling-runs/{run['id']}").json()["status"] == "published",
                       what="the run published", timeout_s=180, alive=[agent])  # fmt: skip
        finally:
            agent.terminate()
            agent.wait(timeout=30)
        yield Site(svc, reader, device, run["id"], db)


def sign_in(site: Site, token: str) -> httpx.Client:
    """A browser-like client: fetch the form (and its cookie), post it back with its CSRF token."""
    client = httpx.Client(base_url=site.url, timeout=60)
    form = client.get("/ui/login")
    csrf = CSRF.search(form.text)[1]  # type: ignore[index]
    resp = client.post("/ui/login", data={"csrf": csrf, "token": token, "next": "/ui/"})
    assert resp.status_code == 303, resp.text
    return client


def csrf_of(client: httpx.Client, path: str = "/ui/") -> str:
    return CSRF.search(client.get(path).text)[1]  # type: ignore[index]


def device_names(site: Site) -> list[str]:
    with site.svc.client() as admin:
        return [d["name"] for d in admin.get("/v1/devices", params={"include_retired": True}).json()]


# ---- sessions and CSRF --------------------------------------------------------------------------------------
def test_session_cookie_is_httponly_strict_and_never_holds_the_token(site: Site) -> None:
    client = httpx.Client(base_url=site.url, timeout=60)
    form = client.get("/ui/login")
    csrf = CSRF.search(form.text)[1]  # type: ignore[index]
    resp = client.post("/ui/login", data={"csrf": csrf, "token": site.svc.admin_token, "next": "/ui/runs"})
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/runs"
    cookie = next(h for h in resp.headers.get_list("set-cookie") if h.startswith("dnas_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/ui" in cookie
    assert site.svc.admin_token not in cookie
    assert client.get("/ui/runs").status_code == 200


def test_sign_in_refuses_agent_tokens_unknown_tokens_and_posts_without_the_forms_csrf_token(site: Site) -> None:
    client = httpx.Client(base_url=site.url, timeout=60)
    assert client.post("/ui/login", data={"token": site.svc.admin_token}).status_code == 403  # no form cookie
    csrf = CSRF.search(client.get("/ui/login").text)[1]  # type: ignore[index]
    assert client.post("/ui/login", data={"csrf": "0" * 64, "token": site.svc.admin_token}).status_code == 403
    agent = client.post("/ui/login", data={"csrf": csrf, "token": site.device["agent_token"]})
    assert agent.status_code == 403 and "agent token" in agent.text and "dnas_session" not in agent.cookies
    assert client.post("/ui/login", data={"csrf": csrf, "token": "dnas_read_nope"}).status_code == 401
    # An open redirect is not possible: `next` leaves the dashboard for nothing.
    resp = client.post("/ui/login", data={"csrf": csrf, "token": site.reader, "next": "//evil.example/x"})
    assert resp.headers["location"] == "/ui/"


def test_a_form_without_its_csrf_token_or_from_another_site_changes_nothing(site: Site) -> None:
    admin = sign_in(site, site.svc.admin_token)
    refused = admin.post("/ui/devices", data={"name": "no-csrf", "platform": "linux"})
    assert refused.status_code == 403 and "CSRF" in refused.text
    csrf = csrf_of(admin)
    foreign = admin.post("/ui/devices", data={"csrf": csrf, "name": "cross-site", "platform": "linux"},
                         headers={"Origin": "http://evil.example"})  # fmt: skip
    assert foreign.status_code == 403 and "cross-site" in foreign.text
    assert not {"no-csrf", "cross-site"} & set(device_names(site))
    made = admin.post("/ui/devices", data={"csrf": csrf, "name": "from-the-form", "platform": "linux"},
                      headers={"Origin": site.url})  # fmt: skip
    assert made.status_code == 201 and "dnas_agent_" in made.text and "from-the-form" in device_names(site)
    assert made.headers["cache-control"] == "no-store"  # the page that shows the agent token is never cached


def _sessions_of(site: Site, token: str) -> list[float]:
    """Seconds left of each stored session of this token, as the service keeps them (no secret, only hashes)."""
    engine = make_engine(site.db)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT expires_at FROM ui_sessions WHERE token_hash = :d"),
                                {"d": hashlib.sha256(token.encode()).hexdigest()}).scalars()  # fmt: skip
            return [_epoch(value) - time.time() for value in rows]
    finally:
        engine.dispose()


def _epoch(value: Any) -> float:
    """A stored timestamp (a datetime, or SQLite's text) as seconds since the epoch, taken as UTC."""
    from datetime import UTC, datetime

    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _end_sessions_of(site: Site, token: str) -> None:
    """Move this token's sessions past their expiry, as 12 hours passing would."""
    engine = make_engine(site.db)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE ui_sessions SET expires_at = created_at WHERE token_hash = :d"),
                         {"d": hashlib.sha256(token.encode()).hexdigest()})  # fmt: skip
    finally:
        engine.dispose()


def _signed_out(site: Site, cookie: str) -> str:
    """Where the dashboard sends a browser presenting `cookie`: the sign-in form's address, or '' if it is let in."""
    with httpx.Client(base_url=site.url, timeout=60, cookies={"dnas_session": cookie}) as browser:
        page = browser.get("/ui/")
    return page.headers["location"] if page.status_code == 303 else ""


def test_a_session_lasts_twelve_hours_and_ends_on_the_server(site: Site) -> None:
    with site.svc.client() as admin:
        token = admin.post("/v1/tokens", json={"name": "twelve-hours"}).json()["token"]
    browser = sign_in(site, token)
    cookie = browser.cookies["dnas_session"]
    assert [round(left / 3600) for left in _sessions_of(site, token)] == [12]
    assert _signed_out(site, cookie) == ""
    assert ENDED in _signed_out(site, cookie[:-4] + "AAAA")  # another secret: no session
    _end_sessions_of(site, token)  # its 12 hours passed
    assert ENDED in _signed_out(site, cookie)
    assert len(sign_in(site, token).cookies["dnas_session"]) >= 43  # 32 random bytes, a new session


def test_a_tampered_or_revoked_session_signs_the_browser_out(site: Site) -> None:
    with site.svc.client() as admin:
        minted = admin.post("/v1/tokens", json={"name": "short"}).json()
    client = sign_in(site, minted["token"])
    assert client.get("/ui/").status_code == 200
    value = client.cookies["dnas_session"]
    forged = httpx.Client(base_url=site.url, timeout=60, cookies={"dnas_session": "f" * 64 + value[64:]})
    assert forged.get("/ui/").headers["location"].startswith("/ui/login")
    with site.svc.client() as admin:
        admin.post(f"/v1/tokens/{minted['id']}/revoke").raise_for_status()
    gone = client.get("/ui/")
    assert gone.status_code == 303 and "why=invalid" in gone.headers["location"]


# ---- who may do what ----------------------------------------------------------------------------------------
def test_pages_accept_bearer_tokens_of_readers_and_admins_only(site: Site) -> None:
    with site.bearer(site.reader) as reader:
        assert reader.get("/ui/").status_code == 200
    with site.bearer(site.device["agent_token"]) as agent:
        page = agent.get("/ui/")
        assert page.status_code == 403 and page.headers["content-type"].startswith("text/html")
    with site.bearer("dnas_read_not-a-token") as unknown:
        page = unknown.get("/ui/")
        assert page.status_code == 401 and page.headers["www-authenticate"] == "Bearer"
    anonymous = httpx.get(f"{site.url}/ui/devices/{site.device['id']}")
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/ui/login?next=/ui/devices/")
    with site.bearer(site.svc.admin_token) as admin:  # a header no browser adds by itself needs no CSRF token
        assert admin.post("/ui/devices", data={"name": "scripted", "platform": "ios"}).status_code == 201


def test_a_reader_is_refused_every_admin_action_with_a_403_page_and_nothing_changes(site: Site) -> None:
    with site.svc.client() as admin:
        target = register(admin, "untouchable")
        body = {"device_id": target["id"], "space": SPACE, "config": CONFIG, "anchors": 0}
        run = admin.post("/v1/profiling-runs", json=body).raise_for_status().json()  # no agent: stays running
        tokens_before = admin.get("/v1/tokens").json()
    reader = sign_in(site, site.reader)
    csrf = csrf_of(reader)
    attempts = [
        ("GET", "/ui/devices/new", None),
        ("GET", "/ui/tokens", None),
        ("POST", "/ui/devices", {"name": "by-a-reader", "platform": "linux"}),
        ("POST", "/ui/tokens", {"name": "by-a-reader"}),
        ("POST", f"/ui/tokens/{tokens_before[0]['id']}/revoke", {}),
        ("POST", f"/ui/devices/{target['id']}/retire", {}),
        ("POST", f"/ui/devices/{target['id']}/runs", {"resolution": "32", "width": "0.25"}),
        ("POST", f"/ui/runs/{run['id']}/cancel", {}),
    ]
    for method, path, form in attempts:
        resp = reader.request(method, path, data=None if form is None else {"csrf": csrf, **form})
        assert resp.status_code == 403, (method, path, resp.status_code)
        assert resp.headers["content-type"].startswith("text/html") and "needs the admin token" in resp.text
    with site.svc.client() as admin:
        assert admin.get(f"/v1/devices/{target['id']}").json()["retired_at"] is None
        assert admin.get(f"/v1/profiling-runs/{run['id']}").json()["status"] == "running"
        assert admin.get("/v1/tokens").json() == tokens_before
        assert len(admin.get("/v1/profiling-runs", params={"device_id": target["id"]}).json()) == 1
        admin.post(f"/v1/profiling-runs/{run['id']}/cancel").raise_for_status()
    assert "by-a-reader" not in device_names(site)


# ---- every page, and what it loads --------------------------------------------------------------------------
def pages(site: Site) -> list[str]:
    d = site.device["id"]
    return ["/ui/", "/ui/?retired=true", f"/ui/devices/{d}", "/ui/runs", "/ui/runs?status=published",
            f"/ui/runs/{site.run_id}", f"/ui/devices/{d}/tables/1", f"/ui/devices/{d}/tables/latest",
            "/ui/compare", f"/ui/compare?a={d}:1&b={d}:1", f"/ui/devices/{d}/fidelity", "/ui/tokens",
            "/ui/devices/new"]  # fmt: skip


def test_every_page_renders_with_its_security_headers_and_loads_nothing_from_elsewhere(site: Site) -> None:
    with site.bearer(site.svc.admin_token) as admin:
        for path in pages(site):
            page = admin.get(path)
            assert page.status_code == 200, (path, page.text[:500])
            assert "default-src 'none'" in page.headers["content-security-policy"]
            assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
            external = re.findall(r'(?:src|href|action)="((?:https?:)?//[^"]*)"', page.text)
            assert external == [], (path, external)
        for asset, kind in (("ui.css", "text/css"), ("ui.js", "javascript")):
            resp = admin.get(f"/ui/static/{asset}")
            assert resp.status_code == 200 and kind in resp.headers["content-type"]
            assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", resp.text), asset  # the SVG namespace only
        missing = admin.get("/ui/no-such-page")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")


def test_the_table_page_and_download_match_the_api(site: Site) -> None:
    d = site.device["id"]
    with site.bearer(site.reader) as reader:
        api = reader.get(f"/v1/devices/{d}/latency-tables/1")
        page = reader.get(f"/ui/devices/{d}/tables/1").text
        assert page.count('<g class="cell') == 22 * len(SPACE["candidates"])
        # The rule's per-op term and why it is what it is: two anchors cannot support a slope, so 0.
        assert api.json()["prediction"]["per_op_us"] == 0.0
        assert '<dd id="per-op"><strong>0.00 us</strong>' in page and "needs 4+ anchors" in page
        for entry in api.json()["entries"]:
            assert entry["key"] in page
        download = reader.get(f"/ui/devices/{d}/tables/1/download", params={"format": "json"})
        assert download.content == api.content and api.headers["etag"] in (
            download.headers["etag"],
            f"W/{download.headers['etag']}",
        )
        assert "attachment" in download.headers["content-disposition"]
        csv = reader.get(f"/ui/devices/{d}/tables/1/download", params={"format": "csv"})
        assert csv.text == reader.get(f"/v1/devices/{d}/latency-tables/1", params={"format": "csv"}).text


# ---- validation reports and calibrations (the API the fidelity page reads) -------------------------------------
def _report(site: Site, n: int = 3) -> dict[str, Any]:
    arch = ["skip"] * 22
    rows = [{"arch": arch, "predicted_us": 100.0 + i, "measured_us": 104.0 + 2 * i} for i in range(n)]
    figures = {"n": n, "within_5_pct": 1.0, "within_10_pct": 1.0, "mape_pct": 4.1, "worst_error_pct": -4.8,
               "mean_signed_error_pct": -4.1, "kendall_tau": 1.0}  # fmt: skip
    return {"device_id": site.device["id"], "table_version": 1, "networks": n, "seed": 0, "rows": rows,
            "raw": figures, "noise_ceiling": figures | {"kendall_tau": None, "what": "even vs odd rounds"},
            "drift": {"ratio": 0.97}}  # fmt: skip


def test_validation_reports_are_kept_listed_and_read_back_whole(site: Site) -> None:
    d = site.device["id"]
    with site.svc.client() as admin, site.bearer(site.reader) as reader:
        stored = admin.post(f"/v1/devices/{d}/validations", json=_report(site))
        assert stored.status_code == 201, stored.text
        listed = reader.get(f"/v1/devices/{d}/validations").json()
        assert [r["id"] for r in listed][-1] == stored.json()["id"] and "rows" not in listed[-1]["report"]
        whole = reader.get(f"/v1/devices/{d}/validations/{stored.json()['id']}").json()
        assert whole["report"]["rows"] == _report(site)["rows"] and whole["table_version"] == 1
        page = reader.get(f"/ui/devices/{d}/fidelity").text
        assert page.count('<circle class="dot') == 3 and "4.10%" in page


@pytest.mark.parametrize(
    ("change", "status"),
    [
        (lambda r: r | {"table_version": 99}, 404),
        (lambda r: r | {"rows": []}, 422),
        (lambda r: r | {"rows": [{**r["rows"][0], "measured_us": 0}]}, 422),
        (lambda r: r | {"raw": {**r["raw"], "within_5_pct": 1.5}}, 422),
        (lambda r: r | {"notes": "x" * (3 * 1024 * 1024)}, 422),  # within the body limit, above a report's 2 MiB
    ],
    ids=["unknown-table", "no-rows", "zero-latency", "share-above-1", "too-large"],
)
def test_a_bad_validation_report_is_refused_and_nothing_is_stored(site: Site, change, status: int) -> None:
    d = site.device["id"]
    with site.svc.client() as admin:
        before = admin.get(f"/v1/devices/{d}/validations").json()
        resp = admin.post(f"/v1/devices/{d}/validations", json=change(_report(site)))
        assert resp.status_code == status, resp.text[:300]
        assert admin.get(f"/v1/devices/{d}/validations").json() == before


def test_only_the_admin_stores_a_report_and_nan_is_not_json(site: Site) -> None:
    d = site.device["id"]
    with site.bearer(site.reader) as reader:
        assert reader.post(f"/v1/devices/{d}/validations", json=_report(site)).status_code == 403
    report = _report(site)
    body = json.dumps(report | {"raw": report["raw"] | {"kendall_tau": float("nan")}})  # Python writes NaN
    assert "NaN" in body
    with site.svc.client() as admin:
        resp = admin.post(f"/v1/devices/{d}/validations", content=body, headers={"Content-Type": "application/json"})
        assert resp.status_code == 422


def test_calibrations_are_listed_and_read_whole(site: Site) -> None:
    d = site.device["id"]
    body = {"table_version": 1, "model": {"kind": "family-v1", "factors": {"e1": 1.0, "e3": 1.0, "e6": 1.0,
            "other": 1.0}, "intercept_us": 2.0}, "metrics": {"n": 2, "drift": 1.0},
            "fitted_on": [{"arch": ["skip"] * 22, "measured_adjusted_us": 90.0}]}  # fmt: skip
    with site.svc.client() as admin, site.bearer(site.reader) as reader:
        version = admin.post(f"/v1/devices/{d}/calibrations", json=body).raise_for_status().json()["version"]
        listed = reader.get(f"/v1/devices/{d}/calibrations").json()
        assert listed[-1]["version"] == version and "fitted_on" not in listed[-1]
        whole = reader.get(f"/v1/devices/{d}/calibrations/{version}").json()
        assert whole["fitted_on"] == body["fitted_on"]
        assert reader.get(f"/v1/devices/{d}/calibrations/latest").json()["version"] == version
        assert reader.get(f"/v1/devices/{d}/calibrations/999").status_code == 404
        page = reader.get(f"/ui/devices/{d}/fidelity", params={"calibration": version}).text
        assert "intercept 2.0 us" in page


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"candidates": []}, "at least one candidate"),
        ({"resolution": "big"}, "needs a number"),
        ({"width": "9"}, "width"),
        ({"rounds": "3", "runs_per_round": "5000"}, "10000"),
    ],
    ids=["no-candidate", "not-a-number", "width-above-4", "too-many-runs"],
)
def test_a_refused_run_form_says_why_keeps_what_was_typed_and_starts_nothing(site: Site, fields, says: str) -> None:
    d = site.device["id"]
    admin = sign_in(site, site.svc.admin_token)
    form = {"csrf": csrf_of(admin), "resolution": "32", "width": "0.25", "num_classes": "10", "warmup": "1",
            "rounds": "4", "runs_per_round": "1", "anchors": "0", "candidates": ["skip"]} | fields  # fmt: skip
    with site.svc.client() as api:
        before = api.get("/v1/profiling-runs", params={"device_id": d}).json()
        resp = admin.post(f"/ui/devices/{d}/runs", data=form)
        assert resp.status_code == 422 and says in resp.text, resp.text[-2000:]
        assert 'id="run-error"' in resp.text and f'value="{form["resolution"]}"' in resp.text
        assert api.get("/v1/profiling-runs", params={"device_id": d}).json() == before


def test_a_device_page_shows_its_agent_connected_and_the_jobs_it_holds(site: Site) -> None:
    with site.svc.client() as admin:
        device = register(admin, f"holder-{os.getpid()}")
        body = {"device_id": device["id"], "space": SPACE, "config": CONFIG, "anchors": 0}
        run = admin.post("/v1/profiling-runs", json=body).raise_for_status().json()
    with site.bearer(device["agent_token"]) as agent:
        batch = agent.post("/v1/agent/lease", json={"wait_seconds": 0, "max_jobs": 5, "protocol": 2}).json()
    assert len(batch["jobs"]) == 5
    with site.bearer(site.reader) as reader:
        page = reader.get(f"/ui/devices/{device['id']}").text
        assert f'<a href="/ui/runs/{run["id"]}">run {run["id"]}</a>: 5 jobs leased until' in page
        assert ">connected<" in page
        overview = reader.get("/ui/").text
        assert f'<a href="/ui/runs/{run["id"]}">run {run["id"]}</a>: 5 jobs' in overview
        progress = reader.get(f"/ui/runs/{run['id']}/progress").json()
        assert (progress["status"], progress["measuring"], progress["done"]) == ("running", 5, 0)
        assert progress["queued"] == progress["total"] - 5
    with site.svc.client() as admin:
        admin.post(f"/v1/profiling-runs/{run['id']}/cancel").raise_for_status()
