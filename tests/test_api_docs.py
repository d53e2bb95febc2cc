"""/docs, the interactive API reference, is served from the service itself under the dashboard's CSP, over real
HTTP through uvicorn on loopback and in a real browser (Debian's Chromium).

FastAPI's own /docs and /redoc pages load an unpinned script from a CDN on the dashboard's origin. Here the
page must name only this origin's files, carry the dashboard's Content-Security-Policy, and still work in a
browser under that policy: every route of the OpenAPI document listed, an operation opened, no console error
(Chromium reports each CSP refusal as one) and no request to another origin. Redoc cannot run under
`style-src 'self'`, so /redoc is gone rather than served with a looser policy.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import fastapi_offline
import httpx
import pytest

from profiler_service.ui.render import SECURITY_HEADERS
from tests.browser import ConsoleLog, chromium, require_chromium, shoot
from tests.service_harness import Service, running_service

ASSET = re.compile(r'(?:src|href)="([^"]*)"')
VENDOR = Path(fastapi_offline.__file__).parent / "static"  # Swagger UI as the pinned package ships it


@pytest.fixture(scope="module")
def svc(tmp_path_factory) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("api-docs")
    with running_service(f"sqlite:///{work / 'docs.db'}", work) as service:
        yield service


def test_docs_names_only_this_origins_files_under_the_dashboards_csp(svc: Service) -> None:
    page = httpx.get(f"{svc.url}/docs", timeout=60)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert "<script>" not in page.text  # an inline script would be refused by that CSP anyway
    assets = ASSET.findall(page.text)
    assert len(assets) == 4, assets  # the icon, the stylesheet, Swagger UI, the start-up script
    for url in assets:
        assert url.startswith("/") and not url.startswith("//"), url
        resp = httpx.get(f"{svc.url}{url}", timeout=60)
        assert resp.status_code == 200, url
        vendored = VENDOR / Path(url.split("?")[0]).name
        if vendored.is_file():  # the package's bytes, under a URL that names their hash
            assert resp.content == vendored.read_bytes()
            assert url.endswith("?v=" + hashlib.sha256(resp.content).hexdigest()[:12])
    assert httpx.get(f"{svc.url}/redoc", timeout=60).status_code == 404


def test_docs_works_in_a_browser_under_that_csp_and_loads_nothing_from_elsewhere(svc: Service, tmp_path) -> None:
    require_chromium()
    spec = httpx.get(f"{svc.url}/openapi.json", timeout=60).raise_for_status().json()
    operations = sum(len(methods) for methods in spec["paths"].values())
    with chromium() as browser:
        page = browser.new_page()
        log = ConsoleLog()
        log.attach(page)
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(f"{svc.url}/docs")
        page.wait_for_selector(".opblock", timeout=120_000)
        assert page.locator(".opblock").count() == operations
        page.locator(".opblock-summary").first.click()  # an operation opened: its parameters and responses
        page.wait_for_selector(".opblock-body", timeout=60_000)
        shoot(page, tmp_path, "docs")
        assert log.unexpected() == []
    elsewhere = [url for url in requested if not url.startswith(svc.url + "/") and not url.startswith("data:")]
    assert elsewhere == []
    assert f"{svc.url}/openapi.json" in requested
