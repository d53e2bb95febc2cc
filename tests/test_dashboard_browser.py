"""The dashboard in a real browser (Debian's Chromium through Playwright) against the real service, with real
local agents measuring a tiny space: sign in as reader and admin, register a device, watch a run's progress
bar reach "published" without a reload, read a table's heatmap, compare two devices, filter a device's tables
by precision and compare its fp32 and int8 tables, read the fidelity page, and see a reader refused an admin
action. Every page must load without a console error; each test writes
screenshots of what it saw (the run's tmp dir, printed; DNAS_UI_SCREENSHOTS=DIR also keeps the table page's).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import ConsoleLog, chromium, require_chromium, shoot
from tests.hand_measured import measure_by_hand
from tests.service_harness import Service, register, running_service, start_agent
from tests.test_dashboard_precision import SPACE as PRECISION_SPACE
from tests.test_dashboard_precision import base, factor
from tests.waiting import wait_until

CANDIDATES = ["ir_k3_e1", "ir_k5_e6", "skip"]
SPACE = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": CANDIDATES}
CONFIG = {"warmup": 1, "rounds": 4, "runs_per_round": 1}
ANCHORS = 3
LAYERS = 22  # the FBNet macro-architecture's searchable layers


@dataclass
class Lab:
    svc: Service
    work: Path
    shots: Path
    reader_token: str
    a: dict[str, Any]  # two devices with a published table each
    b: dict[str, Any]
    validation: dict[str, Any]

    @property
    def url(self) -> str:
        return self.svc.url


def _run(admin: httpx.Client, device_id: int) -> dict[str, Any]:
    body = {"device_id": device_id, "space": SPACE, "config": CONFIG, "anchors": ANCHORS}
    return admin.post("/v1/profiling-runs", json=body).raise_for_status().json()


def _published(admin: httpx.Client, run_id: int) -> bool:
    run = admin.get(f"/v1/profiling-runs/{run_id}").raise_for_status().json()
    assert run["status"] in ("running", "published"), run
    return run["status"] == "published"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    """Two devices, each profiled by its own local agent; device A validated with `dnas validate` (which
    uploads its report) and given a calibration through the API."""
    require_chromium()
    work = tmp_path_factory.mktemp("dashboard")
    # A short long poll: an agent told to stop finishes its poll first, and the tests stop three of them.
    db = f"sqlite:///{work / 'dashboard.db'}"
    with running_service(db, work, DNAS_SERVICE_LONG_POLL_SECONDS="2") as svc, svc.client() as admin:
        reader = admin.post("/v1/tokens", json={"name": "browser-reader"}).raise_for_status().json()["token"]
        a, b = register(admin, "bench-a"), register(admin, "bench-b")
        agents = [start_agent(svc, d["agent_token"], work) for d in (a, b)]
        try:
            runs = [_run(admin, d["id"]) for d in (a, b)]
            for run in runs:
                wait_until(lambda r=run: _published(admin, r["id"]), what=f"run {run['id']} published",
                           timeout_s=180, alive=agents)  # fmt: skip
            validation = _validate(svc, a["id"], work)
            _calibrate(admin, a["id"], validation)
        finally:
            for agent in agents:
                agent.terminate()
            for agent in agents:
                agent.wait(timeout=30)
        shots = work / "screenshots"
        print(f"\nscreenshots: {shots}")
        yield Lab(svc, work, shots, reader, a, b, validation)


def _validate(svc: Service, device_id: int, work: Path) -> dict[str, Any]:
    """The real CLI, as a user runs it: measures 4 networks and the anchors, writes fidelity.json, uploads it."""
    out = work / "fidelity"
    proc = subprocess.run(
        [sys.executable, "-m", "dnas", "validate", "--device", str(device_id), "--samples", "4", "--resolution", "32",
         "--width", "0.25", "--classes", "10", "--candidates", ",".join(CANDIDATES), "--out", str(out),
         "--server", svc.url],
        env=os.environ | {"DNAS_TOKEN": svc.admin_token}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the service keeps it as validation report" in proc.stdout, proc.stdout
    return json.loads((out / "fidelity.json").read_text())


def _calibrate(admin: httpx.Client, device_id: int, report: dict[str, Any]) -> None:
    """A calibration stored the way `dnas validate --calibrate` stores one (it needs 20 networks to fit)."""
    drift = (report.get("drift") or {}).get("ratio", 1.0)
    body = {
        "table_version": report["table_version"],
        "model": {"kind": "family-v1", "factors": {"e1": 1.0, "e3": 1.0, "e6": 1.05, "other": 0.9},
                  "intercept_us": 5.0},
        "metrics": {"raw": report["raw"], "n": len(report["rows"]), "drift": drift},
        "fitted_on": [{"arch": r["arch"], "measured_adjusted_us": r["measured_us"] / drift} for r in report["rows"]],
    }  # fmt: skip
    admin.post(f"/v1/devices/{device_id}/calibrations", json=body).raise_for_status()


@pytest.fixture(scope="module")
def browser(lab: Lab) -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def console() -> ConsoleLog:
    return ConsoleLog()


@pytest.fixture
def page(browser, console: ConsoleLog) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    pg = context.new_page()
    console.attach(pg)
    pg.on("dialog", lambda dialog: dialog.accept())  # the confirm() before retiring or cancelling
    yield pg
    context.close()
    assert console.unexpected() == [], "the pages printed errors"


def sign_in(page: Any, lab: Lab, token: str) -> None:
    page.goto(f"{lab.url}/ui/")
    page.wait_for_url("**/ui/login?**")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{lab.url}/ui/")


def expect():  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


# ---- signing in -------------------------------------------------------------------------------------------
def test_sign_in_as_reader_and_admin_and_never_with_an_agent_token(page, lab: Lab, console: ConsoleLog) -> None:
    console.expected.append("status of 403")  # the refused sign-in is answered 403, which the browser logs
    page.goto(f"{lab.url}/ui/runs")
    assert "/ui/login" in page.url  # no session: the sign-in form, which comes back to the page asked for
    shoot(page, lab.shots, "login")
    page.get_by_label("Token").fill(lab.a["agent_token"])
    page.get_by_role("button", name="Sign in").click()
    expect()(page.locator("#login-error")).to_contain_text("agent token")

    page.get_by_label("Token").fill(lab.reader_token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{lab.url}/ui/runs")
    expect()(page.locator(".who .role")).to_have_text("reader")
    assert page.get_by_role("link", name="Tokens").count() == 0  # an admin page is not offered to a reader

    cookie = next(c for c in page.context.cookies() if c["name"] == "dnas_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert lab.reader_token not in cookie["value"]  # the cookie holds a session secret, never the token

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/ui/login?**")
    sign_in(page, lab, lab.svc.admin_token)
    expect()(page.locator(".who .role")).to_have_text("admin")
    expect()(page.locator("#devices")).to_contain_text("bench-a")
    shoot(page, lab.shots, "overview")


def test_admin_registers_a_device_and_sees_its_agent_token_once(page, lab: Lab) -> None:
    sign_in(page, lab, lab.svc.admin_token)
    page.get_by_role("link", name="Register a device").click()
    page.get_by_label("Name").fill("lab-phone-7")
    page.get_by_label("Platform").select_option("android")
    page.get_by_role("button", name="Register").click()
    expect()(page.locator("h1")).to_have_text("lab-phone-7 is registered")
    token = page.get_by_label("Agent token").input_value()
    command = page.locator("#agent-command").inner_text()
    assert "dnas agent android" in command and lab.url in command and token not in command
    shoot(page, lab.shots, "device-registered")

    # The token shown is the device's: its agent can report with it.
    resp = httpx.put(f"{lab.url}/v1/agent/fingerprint", json={"model": "Pixel 7"},
                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert resp.status_code == 204
    page.get_by_role("link", name="Go to lab-phone-7").click()
    expect()(page.locator("#agent-state .badge")).to_have_text("connected")  # the whole badge: not "not connected"
    expect()(page.locator("dl.facts")).to_contain_text("Pixel 7")
    assert token not in page.content()  # shown once: never again
    shoot(page, lab.shots, "device")


# ---- a run, live --------------------------------------------------------------------------------------------
def test_run_progress_bar_reaches_published_without_a_reload(page, lab: Lab) -> None:
    with lab.svc.client() as admin:
        device = register(admin, "live-host")
    sign_in(page, lab, lab.svc.admin_token)
    page.goto(f"{lab.url}/ui/devices/{device['id']}")
    form = page.locator("#run-form")
    form.get_by_label("Resolution (px)").fill("32")
    form.get_by_label("Width multiplier").fill("0.25")
    form.get_by_label("Classes").fill("10")
    for box in form.locator("input[name=candidates]").all():
        box.set_checked(box.get_attribute("value") in CANDIDATES)
    form.get_by_label("Warm-up runs").fill("1")
    form.get_by_label("Rounds").fill("4")
    form.get_by_label("Timed runs per round").fill("1")
    form.get_by_label("Anchor networks").fill(str(ANCHORS))
    form.get_by_role("button", name="Start run").click()
    page.wait_for_url("**/ui/runs/*")
    expect()(page.locator("#run-status")).to_have_text("running")
    expect()(page.locator('[data-field="done"]')).to_have_text("0")
    total = int(page.locator('[data-field="total"]').inner_text())
    shoot(page, lab.shots, "run-queued")

    polls = []
    page.on("request", lambda r: "/progress" in r.url and polls.append(r.url))
    page.evaluate("window.__sameDocument = 'kept'")  # gone if the page reloads
    agent = start_agent(lab.svc, device["agent_token"], lab.work)
    try:
        expect()(page.locator("#run-status")).to_have_text("published", timeout=120_000)
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    assert page.evaluate("window.__sameDocument") == "kept"
    assert len(polls) >= 2
    expect()(page.locator('[data-field="done"]')).to_have_text(str(total))
    assert float(page.locator('[data-seg="done"]').get_attribute("width")) == pytest.approx(1000)
    assert page.locator('[data-field="ops_per_s"]').inner_text() != "-"
    shoot(page, lab.shots, "run-published")
    page.locator("#run-table-link").click()
    expect()(page.locator("h1")).to_contain_text("live-host · table v1")


# ---- tables -------------------------------------------------------------------------------------------------
def test_table_page_heatmap_sorting_and_downloads(page, lab: Lab) -> None:
    sign_in(page, lab, lab.reader_token)
    page.goto(f"{lab.url}/ui/devices/{lab.a['id']}")
    page.get_by_role("link", name="v1", exact=True).first.click()
    expect()(page.locator("h1")).to_have_text("bench-a · table v1")

    cells = page.locator("#heatmap g.cell")
    assert cells.count() == LAYERS * len(CANDIDATES)
    # Each layer's cheapest candidate is outlined, and only it (an outline on every cell would say nothing).
    titles = page.locator("#heatmap g.cell title").all_text_contents()
    outlined = [
        "fastest" in (c or "").split() for c in cells.evaluate_all("els => els.map(e => e.getAttribute('class'))")
    ]
    k = len(CANDIDATES)
    for layer in range(LAYERS):
        values = [float(re.search(r": ([0-9.]+) us", t)[1]) for t in titles[layer * k : (layer + 1) * k]]  # type: ignore[index]
        marked = [v for v, o in zip(values, outlined[layer * k : (layer + 1) * k], strict=True) if o]
        assert marked and all(v == min(values) for v in marked) and len(marked) < k, (layer, values, marked)
    assert "ir_k5_e6" in page.locator("#heatmap").text_content()
    expect()(page.locator("#measured-as")).to_contain_text("interleaved")
    expect()(page.locator("main")).to_contain_text("Network constant")

    # Sort by median with the keyboard: ascending, then descending.
    header = page.locator("#op-table thead th", has_text="Median").get_by_role("button")
    header.focus()
    page.keyboard.press("Enter")
    medians = [float(v) for v in page.locator("#op-table tbody tr td:nth-child(4)").all_inner_texts()]
    assert medians == sorted(medians)
    page.keyboard.press("Enter")
    medians = [float(v) for v in page.locator("#op-table tbody tr td:nth-child(4)").all_inner_texts()]
    assert medians == sorted(medians, reverse=True)
    page.get_by_label("Filter ops").fill("ir_k5_e6")
    visible = page.locator("#op-table tbody tr:not(.hidden)")
    assert 0 < visible.count() < len(medians) and all("ir_k5_e6" in t for t in visible.all_inner_texts())
    page.get_by_label("Filter ops").fill("")

    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    csv_text = Path(download.value.path()).read_text()
    assert csv_text.startswith("key,median_us,")
    with page.expect_download() as download:
        page.get_by_role("link", name="JSON").click()
    payload = json.loads(Path(download.value.path()).read_text())
    api = httpx.get(f"{lab.url}/v1/devices/{lab.a['id']}/latency-tables/1",
                    headers={"Authorization": f"Bearer {lab.reader_token}"}).json()  # fmt: skip
    assert payload == api  # the published bytes, as the API serves them
    assert len(csv_text.splitlines()) == len(medians) + 1

    shoot(page, lab.shots, "table")
    page.set_viewport_size({"width": 1280, "height": 1650})
    page.evaluate("window.scrollTo(0, 0)")
    readme = shoot(page, lab.shots, "table-top", full_page=False)
    keep = os.environ.get("DNAS_UI_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(readme, Path(keep) / "dashboard-table.png")


def test_compare_two_devices_as_an_interactive_chart(page, lab: Lab) -> None:
    sign_in(page, lab, lab.reader_token)
    page.goto(f"{lab.url}/ui/compare")
    page.get_by_label("Table A").select_option(f"{lab.a['id']}:1")
    page.get_by_label("Table B").select_option(f"{lab.b['id']}:1")
    page.get_by_role("button", name="Compare").click()
    page.wait_for_url(re.compile(r"/ui/compare\?a="))  # loaded whole: the summary is parsed before the table
    expect()(page.locator("#compare-summary")).to_contain_text("shared ops")
    shared = page.locator("#ratio-table tbody tr").count()
    chart = page.locator("#ratio-chart")
    assert 0 < int(chart.get_attribute("data-bars")) <= 30
    page.get_by_label("Show").select_option("0")  # all
    assert int(chart.get_attribute("data-bars")) == shared
    # By default the ops that differ most come first, either way (|log ratio| falls down the chart).
    # The labels round ratios to 3 decimals (0.995 and 1.005 read back as |log| 0.00501 and 0.00499), so the
    # order is checked to that rounding, not exactly.
    spread = [abs(math.log(r)) for r in _bar_ratios(chart)]
    assert all(x >= y - 1e-3 for x, y in itertools.pairwise(spread)), spread
    page.get_by_label("Kind").select_option("skip")
    assert 0 < int(chart.get_attribute("data-bars")) < shared
    chart.locator("g.op").first.focus()  # keyboard reaches every bar
    expect()(page.locator("#ratio-tip")).to_contain_text("B/A")
    for order, expected in (("asc", sorted), ("desc", lambda r: sorted(r, reverse=True))):
        page.get_by_label("Order").select_option(order)
        ratios = _bar_ratios(chart)
        assert len(ratios) > 1 and ratios == expected(ratios), (order, ratios)
    shoot(page, lab.shots, "compare")


@pytest.fixture(scope="module")
def dual(lab: Lab) -> dict[str, Any]:
    """A device with an fp32 table (v1) and an int8 table (v2) whose numbers are chosen: int8 is 2x the fp32
    time for ir_k3_e1, 0.5x for ir_k5_e6 (tests/test_dashboard_precision.py has the same over plain HTTP)."""
    with lab.svc.client() as admin:
        device = register(admin, "dual-precision")
    fp32 = measure_by_hand(lab.svc, device, PRECISION_SPACE, lambda key: 10.0 + len(key) % 7)
    by_op = {base(k): v for k, v in fp32.items()}
    measure_by_hand(lab.svc, device, PRECISION_SPACE, lambda key: by_op[base(key)] * factor(key), "int8")
    return device


def test_filter_a_devices_tables_by_precision_and_compare_fp32_with_int8(page, lab: Lab, dual) -> None:
    sign_in(page, lab, lab.reader_token)
    page.goto(f"{lab.url}/ui/devices/{dual['id']}")
    badges = page.locator("#table-list tbody .badge")
    expect()(badges).to_have_text(["int8", "fp32"])
    page.get_by_label("Precision").select_option("int8")  # submits itself: no button to find
    page.wait_for_url("**precision=int8**")
    expect()(badges).to_have_text(["int8"])
    page.get_by_label("Precision").select_option("fp32")
    page.wait_for_url("**precision=fp32**")
    expect()(badges).to_have_text(["fp32"])
    shoot(page, lab.shots, "device-fp32-only")

    page.get_by_role("link", name="Compare fp32 v1 with int8 v2").click()
    page.wait_for_url(re.compile(r"/ui/compare\?a="))
    expect()(page.locator("#ratio-label")).to_have_text("int8 / fp32")
    grid = page.locator("#ratio-grid")
    assert grid.locator("g.cell:not(.median)").count() == LAYERS * len(PRECISION_SPACE["candidates"])
    medians = grid.locator("g.cell.median")
    by_family = dict(zip(PRECISION_SPACE["candidates"], medians.evaluate_all(
        "els => els.map(e => Number(e.getAttribute('data-ratio')))"), strict=True))  # fmt: skip
    assert by_family["ir_k3_e1"] == pytest.approx(2.0) and by_family["ir_k5_e6"] == pytest.approx(0.5)
    assert "int8/fp32 2.000" in medians.first.locator("title").text_content()
    # The per-op bars agree with the map: every ir_k3_e1 op is 2x in int8, drawn as B/A 2.000.
    page.get_by_label("Kind").select_option("ir_k3_e1")
    ratios = _bar_ratios(page.locator("#ratio-chart"))
    assert ratios and all(r == pytest.approx(2.0) for r in ratios)
    grid.locator("g.cell").first.focus()  # the map is reachable by keyboard
    shoot(page, lab.shots, "compare-fp32-int8")


def _bar_ratios(chart) -> list[float]:  # type: ignore[no-untyped-def]
    """The B/A ratio of each bar of the compare chart, top to bottom (from the label screen readers hear)."""
    labels = chart.locator("g.op").evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")
    return [float(label.rsplit("B/A ", 1)[1]) for label in labels]


def test_fidelity_page_shows_the_validation_scatter_and_the_calibration(page, lab: Lab) -> None:
    sign_in(page, lab, lab.reader_token)
    page.goto(f"{lab.url}/ui/devices/{lab.a['id']}")
    page.get_by_role("link", name="Fidelity").click()
    report = lab.validation
    detail = page.locator(".side").first
    assert detail.locator("circle.dot").count() == len(report["rows"])
    expect()(detail).to_contain_text(f"{report['raw']['mape_pct']:.2f}%")
    expect()(detail).to_contain_text("noise ceiling")
    calibration = page.locator(".side").nth(1)
    assert calibration.locator("circle.dot").count() == len(report["rows"])
    expect()(calibration).to_contain_text("intercept")
    shoot(page, lab.shots, "fidelity")


# ---- what a reader may not do -------------------------------------------------------------------------------
def test_a_reader_who_tries_an_admin_action_gets_a_403_page(page, lab: Lab, console: ConsoleLog) -> None:
    console.expected.append("status of 403")  # the browser reports the refused page and the refused POST
    sign_in(page, lab, lab.reader_token)
    page.get_by_role("link", name="Register a device").click()
    expect()(page.locator("h1")).to_have_text("403 · Not allowed")
    expect()(page.locator("main")).to_contain_text("needs the admin token")
    shoot(page, lab.shots, "reader-403")

    page.goto(f"{lab.url}/ui/devices/{lab.a['id']}")
    assert page.locator("#run-form").count() == 0  # no admin form is offered
    # A reader who posts the form anyway (with a valid CSRF token of the session) is refused, nothing changes.
    status = page.evaluate(
        """async (url) => {
             const csrf = document.querySelector('input[name=csrf]').value;
             const body = new URLSearchParams({csrf, name: 'sneaky', platform: 'linux'});
             return (await fetch(url, {method: 'POST', body})).status;
           }""",
        f"{lab.url}/ui/devices",
    )
    assert status == 403
    with lab.svc.client() as admin:
        assert "sneaky" not in [d["name"] for d in admin.get("/v1/devices").json()]


def test_admin_mints_a_reader_token_whose_session_ends_when_it_is_revoked(page, browser, lab: Lab) -> None:
    sign_in(page, lab, lab.svc.admin_token)
    page.get_by_role("link", name="Tokens").click()
    page.get_by_label("Name").fill("colleague")
    page.get_by_role("button", name="Mint reader token").click()
    token = page.get_by_label("Reader token").input_value()
    shoot(page, lab.shots, "token-minted")

    other = browser.new_context()
    try:
        theirs = other.new_page()
        sign_in(theirs, lab, token)
        page.goto(f"{lab.url}/ui/tokens")
        page.locator("tr", has_text="colleague").get_by_role("button", name="Revoke").click()
        expect()(page.locator("tr", has_text="colleague")).not_to_contain_text("Revoke")
        theirs.goto(f"{lab.url}/ui/runs")
        assert "/ui/login" in theirs.url
        assert "no longer valid" in theirs.locator("main").inner_text()
    finally:
        other.close()


def test_admin_cancels_a_run_and_retires_a_device(page, lab: Lab) -> None:
    with lab.svc.client() as admin:
        device = register(admin, "short-lived")
        run = _run(admin, device["id"])  # no agent serves it: it stays queued
    sign_in(page, lab, lab.svc.admin_token)
    page.goto(f"{lab.url}/ui/runs/{run['id']}")
    page.get_by_role("button", name="Cancel run").click()
    expect()(page.locator("#run-status")).to_have_text("cancelled")
    expect()(page.locator("#run-reason")).to_contain_text("cancelled by an admin")
    page.goto(f"{lab.url}/ui/devices/{device['id']}")
    page.get_by_role("button", name="Retire short-lived").click()
    expect()(page.locator("#agent-state")).to_contain_text("retired")
    assert page.locator("#run-form").count() == 0


# ---- a phone, a keyboard --------------------------------------------------------------------------------------
def test_pages_fit_a_phone_and_work_from_the_keyboard(browser, lab: Lab, console: ConsoleLog) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        phone = context.new_page()
        console.attach(phone)
        sign_in(phone, lab, lab.reader_token)
        pages = {"overview": "/ui/", "device": f"/ui/devices/{lab.a['id']}", "runs": "/ui/runs",
                 "table": f"/ui/devices/{lab.a['id']}/tables/1",
                 "compare": f"/ui/compare?a={lab.a['id']}:1&b={lab.b['id']}:1",
                 "fidelity": f"/ui/devices/{lab.a['id']}/fidelity"}  # fmt: skip
        for name, path in pages.items():
            phone.goto(f"{lab.url}{path}")
            overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{name} scrolls sideways on a phone by {overflow} px"
            shoot(phone, lab.shots, f"phone-{name}")
        # The first Tab reaches the skip link, which moves focus past the navigation.
        phone.keyboard.press("Tab")
        assert phone.evaluate("document.activeElement.textContent") == "Skip to content"
        phone.keyboard.press("Enter")
        assert phone.evaluate("document.activeElement.id") == "main"
    finally:
        context.close()
    assert console.unexpected() == []
