"""The agent's side of the REST protocol (PROTOCOL.md), with retries: a flaky network or a restarting
service delays an agent, it does not kill it.

Kept apart from the user's client (search/tables/client.py) on purpose: this is the reference
implementation of device_agents/PROTOCOL.md, beside which other agents (the iOS app in device_agents/ios)
are written and which the conformance suite checks. It speaks only `/v1/agent/...` with a device token,
retries what a user's command should report at once, and must not grow the user API's methods. The two
share how an error body is read (`error_detail`)."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from search.tables.client import error_detail

__all__ = ["AgentClient", "ProtocolError", "error_detail", "token_fingerprint"]

log = logging.getLogger("dnas.agent")

RETRY_STATUS = {502, 503, 504}


class ProtocolError(Exception):
    """The service refused a call (4xx): retrying will not help."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


def token_fingerprint(token: str) -> str:
    """How a token may appear in a log: the start of its SHA-256, which is what the service stores (and what its
    header log, DNAS_SERVICE_LOG_HEADERS, shows), never the token."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


class AgentClient:
    def __init__(self, server: str, token: str, *, max_backoff_s: float = 30.0, retry_for_s: float = 600.0,
                 log_http: bool = False) -> None:  # fmt: skip
        self.server = server.rstrip("/")
        self.max_backoff_s = max_backoff_s
        self.retry_for_s = retry_for_s
        hooks = {"response": [self._log_exchange]} if log_http else {}
        self._token_shown = token_fingerprint(token)
        self.http = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(30.0, read=150.0),
            event_hooks=hooks,
        )

    def _log_exchange(self, resp: httpx.Response) -> None:
        """`--log-http`: every call and its answer, with the headers sent; the token as its fingerprint."""
        req = resp.request
        headers = "; ".join(
            f"{name}: {f'Bearer {self._token_shown}' if name.lower() == 'authorization' else value}"
            for name, value in req.headers.items()
        )
        log.info("http %s %s -> %d; sent %s", req.method, req.url.path, resp.status_code, headers)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, *, retry_for_s: float | None = None, within_s: float | None = None,
              **kwargs: Any) -> httpx.Response:  # fmt: skip
        """One protocol call, retried on 502/503/504 and network errors for `retry_for_s`. With `within_s` the
        whole call ends by then, each request included: its timeout is what is left (without it, one request
        may wait the 150 s read timeout however soon its caller needs an answer)."""
        if within_s is not None:
            retry_for_s = within_s
        elif retry_for_s is None:
            retry_for_s = self.retry_for_s
        deadline = time.monotonic() + retry_for_s
        delay = 0.5
        while True:
            if within_s is not None:
                kwargs["timeout"] = max(0.05, deadline - time.monotonic())
            try:
                resp = self.http.request(method, path, **kwargs)
                if resp.status_code not in RETRY_STATUS:
                    break
                reason = f"HTTP {resp.status_code}"
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if time.monotonic() + delay > deadline:
                raise ConnectionError(f"{method} {path} kept failing for {retry_for_s:.0f}s: {reason}")
            log.warning("%s %s failed (%s); retrying in %.1fs", method, path, reason, delay)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.max_backoff_s)
        if resp.status_code >= 400:
            raise ProtocolError(resp.status_code, error_detail(resp))
        return resp

    # ---- the protocol --------------------------------------------------------------------------------------
    def report_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        self._call("PUT", "/v1/agent/fingerprint", json=fingerprint)

    def report_status(self, problem: str | None, retry_in_s: float | None = None) -> None:
        """Why this agent cannot work now, shown on its device's page. Tried for 10 s only: it is said while
        something is failing already, and the log says it too."""
        body = {"problem": problem[:2000] if problem else None, "retry_in_s": retry_in_s}
        self._call("PUT", "/v1/agent/status", json=body, within_s=10.0)

    def lease(self, wait_seconds: float = 20.0) -> dict[str, Any] | None:
        """Protocol 1: one job at a time."""
        resp = self._call("POST", "/v1/agent/lease", json={"wait_seconds": wait_seconds})
        return None if resp.status_code == 204 else resp.json()

    def lease_batch(self, wait_seconds: float = 20.0, max_jobs: int = 500) -> dict[str, Any] | None:
        """Protocol 2: up to `max_jobs` jobs of one group under one lease token, measured together."""
        body = {"wait_seconds": wait_seconds, "max_jobs": max_jobs, "protocol": 2}
        resp = self._call("POST", "/v1/agent/lease", json=body)
        return None if resp.status_code == 204 else resp.json()

    def download(self, job: dict[str, Any], cache_dir: Path) -> Path:
        """Fetch the model once per checksum; a truncated or corrupted download is refused, never measured."""
        cache_dir.mkdir(parents=True, exist_ok=True)
        target = cache_dir / f"{job['model_sha256']}.onnx"
        if target.exists() and _sha256(target) == job["model_sha256"]:
            return target
        resp = self._call("GET", self.model_path(job["model_url"]))
        digest = hashlib.sha256(resp.content).hexdigest()
        if digest != job["model_sha256"]:
            raise ValueError(
                f"model download for job {job['job_id']} is corrupt: sha256 {digest[:12]} != {job['model_sha256'][:12]}"
            )
        # A name of its own: fleet workers share the cache and may fetch the same model at once.
        tmp = target.with_name(f"{target.name}.{os.getpid()}-{threading.get_ident()}.part")
        tmp.write_bytes(resp.content)
        tmp.replace(target)
        return target

    def model_path(self, model_url: str) -> str:
        """A model URL is a path below the server this agent was given, resolved like every other call. An
        absolute URL is followed only to that same server (scheme, host and port): the agent never sends its
        token anywhere else, e.g. to an http:// URL a proxy's Host header produced."""
        url = httpx.URL(model_url)
        if not url.is_absolute_url:
            # "//host/path" names another host without a scheme: not a path of this server, whatever httpx would
            # make of it (it kept the path and dropped the host); refused, as the iOS app does (spec/url_resolution).
            if not model_url.startswith("/") or model_url.startswith("//"):
                raise ValueError(f"model_url {model_url[:100]!r} is neither a path nor a URL")
            return model_url
        server = httpx.URL(self.server)
        if (url.scheme, url.host, url.port) != (server.scheme, server.host, server.port):
            raise ValueError(f"model_url {model_url[:100]!r} is not on {self.server}; refusing to send the token there")
        base = server.raw_path.decode().rstrip("/")
        path = url.raw_path.decode()
        return path[len(base) :] if base and path.startswith(base + "/") else path

    # A heartbeat, its retries and each request's wait included, ends before the next one is due: one stuck in
    # backoff or in a read that a stalled service never answers would let the lease run out meanwhile.
    def heartbeat(self, job: dict[str, Any], within_s: float) -> None:
        self._call("POST", f"/v1/agent/jobs/{job['job_id']}/heartbeat", json={"lease_token": job["lease_token"]},
                   within_s=within_s)  # fmt: skip

    def heartbeat_batch(self, lease_token: str, within_s: float) -> None:
        self._call("POST", "/v1/agent/heartbeat", json={"lease_token": lease_token}, within_s=within_s)

    def results(self, lease_token: str, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A batch's results in one call; each item is acknowledged on its own."""
        body = {"lease_token": lease_token, "results": results}
        return self._call("POST", "/v1/agent/results", json=body).json()["acks"]

    def result(self, job: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
        body = {"lease_token": job["lease_token"], **stats}
        return self._call("POST", f"/v1/agent/jobs/{job['job_id']}/result", json=body).json()

    def failure(self, job: dict[str, Any], reason: str, *, give_back: bool = False) -> dict[str, Any]:
        """Report a job failed (requeued while attempts remain), or with `give_back` not tried at all. A service
        from before give-backs refuses the field (422): the report is then sent plain, costing an attempt."""
        path = f"/v1/agent/jobs/{job['job_id']}/failure"
        body = {"lease_token": job["lease_token"], "reason": reason[:4000]}
        if give_back:
            try:
                return self._call("POST", path, json=body | {"give_back": True}).json()
            except ProtocolError as exc:
                if exc.status != 422 or "give_back" not in exc.detail:
                    raise
        return self._call("POST", path, json=body).json()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
