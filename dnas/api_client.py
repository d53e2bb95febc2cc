"""The user's side of the REST API, for the CLI and the search client."""

from __future__ import annotations

from typing import Any

import httpx

from device_agents.client import error_detail
from dnas.errors import UserError


class ServiceClient:
    def __init__(self, server: str, token: str | None, timeout: float = 120.0) -> None:
        if not token:
            raise UserError("no token: pass --token or set DNAS_TOKEN (the admin token, or a reader token to read)")
        self.http = httpx.Client(
            base_url=server.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise UserError(f"cannot reach the service at {self.http.base_url}: {exc}") from None
        if resp.status_code >= 400:
            raise UserError(f"{method} {path} -> HTTP {resp.status_code}: {error_detail(resp)}")
        return resp

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()
