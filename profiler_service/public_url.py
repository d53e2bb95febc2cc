"""Where users reach the service: the URL its pages print and whether its cookies must be Secure.

Behind a TLS proxy the service sees neither the address users typed nor their scheme. The `Host` header is
whatever the caller wrote, so a page that builds `--server` from it prints an attacker's address back
(`Host: attacker.example`), and a scheme taken from the connection is plain http, so cookies lose `Secure`.
The configured public URL (`DNAS_SERVICE_PUBLIC_URL`) answers both. Without it the printed URL is the address
the connection actually reached (the socket's, never a header), and cookies are Secure only when the request
itself came over https (directly, or through a proxy listed in `DNAS_SERVICE_FORWARDED_ALLOW_IPS`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request

from profiler_service.settings import ServiceSettings


def _settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def server_url(request: Request) -> str:
    """The `--server` URL to print: the public URL, else the scheme and local address of this connection."""
    public = _settings(request).public_url
    if public:
        return public
    host, port = request.scope.get("server") or (_settings(request).host, _settings(request).port)
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{request.url.scheme}://{host}:{port}"


def secure_cookies(request: Request) -> bool:
    """Cookies are Secure when users reach the service over https, whatever the hop from the proxy was."""
    public = _settings(request).public_url
    return request.url.scheme == "https" or bool(public and public.startswith("https://"))


def public_origin(request: Request) -> str | None:
    """`scheme://host[:port]` of the public URL: what a browser sends as `Origin` from the dashboard when a
    proxy in front rewrites `Host`. None without a public URL."""
    public = _settings(request).public_url
    if not public:
        return None
    parts = urlsplit(public)
    return f"{parts.scheme}://{parts.netloc}"
