"""The service behind a TLS proxy, over real HTTP through uvicorn on loopback.

A proxy terminates TLS and forwards plain HTTP, so the service must not learn where users reach it from the
request: the `Host` header is the caller's to write (a page printing `--server` from it hands out an
attacker's address), and the hop from the proxy is plain http (cookies built from it lose `Secure`). The
configured public URL decides both. Forwarded headers (`X-Forwarded-For`, `X-Forwarded-Proto`) are believed
only from the proxies `DNAS_SERVICE_FORWARDED_ALLOW_IPS` names; here the test client is the "proxy" on
127.0.0.1, trusted in one service and not in the other.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from profiler_service.settings import ServiceSettings
from tests.service_harness import Service, running_service
from tests.waiting import wait_until

PUBLIC = "https://dnas.example.org/lab"
EVIL = "attacker.example"
SERVER_FLAG = re.compile(r"--server (\S+)")


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory) -> Iterator[Service]:
    """A public https URL is configured; the proxy named is another host, so 127.0.0.1's headers are a claim."""
    work = tmp_path_factory.mktemp("proxy-public")
    with running_service(f"sqlite:///{work / 'p.db'}", work, DNAS_SERVICE_PUBLIC_URL=PUBLIC + "/",
                         DNAS_SERVICE_FORWARDED_ALLOW_IPS="192.0.2.1") as svc:  # fmt: skip
        yield svc


@pytest.fixture(scope="module")
def direct(tmp_path_factory) -> Iterator[Service]:
    """No public URL; the proxy is this host (127.0.0.1), as with nginx or Caddy on the service's machine."""
    work = tmp_path_factory.mktemp("proxy-direct")
    with running_service(f"sqlite:///{work / 'd.db'}", work, DNAS_SERVICE_FORWARDED_ALLOW_IPS="127.0.0.1") as svc:
        yield svc


def printed_servers(svc: Service, host: str) -> list[str]:
    """The `--server` URLs on the two pages that print one: a device registered, a reader token minted."""
    headers = {"Host": host, "Authorization": f"Bearer {svc.admin_token}"}
    with httpx.Client(base_url=svc.url, headers=headers, timeout=600) as admin:
        device = admin.post("/ui/devices", data={"name": f"d-{uuid.uuid4().hex[:8]}", "platform": "linux"})
        token = admin.post("/ui/tokens", data={"name": f"t-{uuid.uuid4().hex[:8]}"})
    assert device.status_code == token.status_code == 201, (device.text, token.text)
    for page in (device, token):
        assert EVIL not in page.text  # nowhere on the page, not only in the command
    return [m for page in (device, token) for m in SERVER_FLAG.findall(page.text)]


def login_cookie(svc: Service, **headers: str) -> str:
    resp = httpx.get(f"{svc.url}/ui/login", headers=headers, timeout=60)
    assert resp.status_code == 200
    return next(h for h in resp.headers.get_list("set-cookie") if h.startswith("dnas_login="))


def logged_client(svc: Service, forwarded_for: str) -> str:
    """The client address uvicorn's access log gives a request sent through the "proxy" on 127.0.0.1."""
    rid = uuid.uuid4().hex
    headers = {"X-Forwarded-For": forwarded_for, "X-Request-ID": rid}
    assert httpx.get(f"{svc.url}/v1/health/live", headers=headers, timeout=60).status_code == 200
    line = wait_until(lambda: next((x for x in svc.log_text().splitlines() if f"[{rid}] uvicorn.access" in x), None),
                      what="the request's access log line", timeout_s=30, alive=[svc.proc])  # fmt: skip
    return line.split("uvicorn.access: ", 1)[1].split(" ", 1)[0].rsplit(":", 1)[0]


def test_printed_server_urls_are_the_public_url_whatever_the_host_header(behind_proxy: Service) -> None:
    assert printed_servers(behind_proxy, EVIL) == [PUBLIC, PUBLIC]


def test_without_a_public_url_the_printed_url_is_the_address_reached_not_the_host_header(direct: Service) -> None:
    assert set(printed_servers(direct, EVIL)) == {direct.url}


def test_cookies_are_secure_when_the_public_url_is_https(behind_proxy: Service) -> None:
    """The proxy's hop is plain http (and its X-Forwarded-Proto is not believed here): Secure all the same."""
    assert "Secure" in login_cookie(behind_proxy)


def test_forwarded_headers_are_believed_only_from_the_proxies_named(behind_proxy: Service, direct: Service) -> None:
    # 127.0.0.1 is not the named proxy: its claims change neither the client in the log nor the scheme.
    assert logged_client(behind_proxy, "203.0.113.7") == "127.0.0.1"
    # 127.0.0.1 is the named proxy: the client it forwards is the one logged, and https makes cookies Secure.
    assert logged_client(direct, "203.0.113.7") == "203.0.113.7"
    assert "Secure" not in login_cookie(direct)
    assert "Secure" in login_cookie(direct, **{"X-Forwarded-Proto": "https"})


def sign_in_from(svc: Service, origin: str) -> int:
    """A sign-in posted by a browser on `origin`, through a proxy that sent the service its own `Host` (as
    nginx does by default). The form's cookie is Secure, so it is sent by hand over this plain-http hop."""
    form = httpx.get(f"{svc.url}/ui/login", timeout=60)
    secret = login_cookie_value(form)
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', form.text)[1]  # type: ignore[index]
    resp = httpx.post(f"{svc.url}/ui/login", data={"csrf": csrf, "token": svc.admin_token, "next": "/ui/"},
                      headers={"Origin": origin, "Cookie": f"dnas_login={secret}"}, timeout=60)  # fmt: skip
    return resp.status_code


def login_cookie_value(resp: httpx.Response) -> str:
    header = next(h for h in resp.headers.get_list("set-cookie") if h.startswith("dnas_login="))
    return header.split(";", 1)[0].split("=", 1)[1]


def test_a_form_from_the_public_origin_is_same_site_whatever_host_the_proxy_sent(behind_proxy: Service) -> None:
    assert sign_in_from(behind_proxy, "https://dnas.example.org") == 303
    assert sign_in_from(behind_proxy, f"https://{EVIL}") == 403
    assert sign_in_from(behind_proxy, "http://dnas.example.org") == 403  # another origin: the scheme differs


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("public_url", "dnas.example.org", "must be http(s)://HOST"),
        ("public_url", "ftp://dnas.example.org", "must be http(s)://HOST"),
        ("public_url", "https://dnas.example.org/?next=x", "no query"),
        ("public_url", "https://user:pw@dnas.example.org", "credentials"),
        ("forwarded_allow_ips", "10.0.0.1,proxy.lan", "'proxy.lan' is not an IP address or network"),
    ],
)
def test_a_bad_proxy_setting_is_refused_with_its_name(setting: str, value: str, says: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=re.escape(says)):
        ServiceSettings(**{setting: value})
    assert ServiceSettings(public_url="", forwarded_allow_ips=" 10.0.0.0/8 , ::1 ").public_url is None
    assert ServiceSettings(forwarded_allow_ips=" 10.0.0.0/8 , ::1 ").forwarded_allow_ips == "10.0.0.0/8,::1"
