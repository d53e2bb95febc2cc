"""The user's side of the service's REST API: one typed client for the CLI, the search, validation, the
quickstart, the benches and the tests.

A method per call a user makes (devices, profiling runs, tables, network sets, calibrations, validation
reports), and the one place that waits for a run. Tables come back parsed once into `PublishedTable`
and are kept on disk by content hash with their ETag, so repeat fetches are 304s and a search runs with the
service unreachable. An agent's side of the protocol is device_agents/client.py (its reference
implementation, with retries an agent needs and a user does not).

Errors are one line a user can act on: `ServiceError` for a refused or unreachable call, `TableError` when a
table cannot be had (what a search reports).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
from platformdirs import user_cache_dir

from db.states import RUN_FINAL, RunStatus
from search.space.macro import SearchSpace
from search.tables.schema import PublishedTable, TableError

log = logging.getLogger("dnas.search")

# A run ends published, failed or cancelled, and never changes after: a waiter that stops on fewer of them
# waits out its timeout on the others (it once did, for 24 hours, on a cancelled run).
# Creating a run exports every new op to ONNX before it answers: seconds on a quiet machine, but 3.5 minutes were
# measured for the 32 px quickstart space on a 2-core machine at load 24, where a 60-120 s timeout gave up.
RUN_CREATE_TIMEOUT_S = 900.0
# How long a wait for a run keeps polling a service it cannot reach, or that answers 502/503/504: a worker
# replaced after a crash, a restart or a deploy drops the connections it held and refuses new ones for
# seconds, and a wait of hours should not end on that (a reused keep-alive connection to a killed worker is
# reset, which httpx does not retry).
UNREACHABLE_GRACE_S = 120.0
TRANSIENT_STATUSES = frozenset({502, 503, 504})


class ServiceError(RuntimeError):
    """The service refused a call (the message has the method, path, status and the service's reason) or could
    not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def error_detail(resp: httpx.Response) -> str:
    """An error body's `detail` as one line: a message, or FastAPI's list of refused fields."""
    try:
        detail = resp.json().get("detail", resp.text)
    except (ValueError, AttributeError):
        return resp.text[:500]
    if not isinstance(detail, list):
        return str(detail)
    parts = []
    for err in detail[:5]:
        if not isinstance(err, dict):
            parts.append(str(err))
            continue
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        ctx = err.get("ctx") if isinstance(err.get("ctx"), dict) else {}
        parts.append(f"{where}: {err.get('msg')}" + (f" ({ctx['error']})" if ctx.get("error") else ""))
    return "; ".join(parts)


def not_published(run: dict[str, Any]) -> str | None:
    """Why a run a caller waited for gave no table (failed, cancelled, or still running at the timeout), as
    one line; None if it was published."""
    status = run["status"]
    if status == RunStatus.PUBLISHED:
        return None
    errors = "; ".join((run.get("errors") or [])[:3])
    if status == RunStatus.FAILED:
        return f"run {run['id']} failed: {errors}"
    if status == RunStatus.CANCELLED:  # a cancelled run says why in `reason`; its jobs rarely have errors
        return f"run {run['id']} was cancelled: {run.get('reason') or errors or 'no reason given'}"
    return f"run {run['id']} is still {status}: {run.get('done', '?')} of {run.get('total', '?')} jobs measured"


class ServiceClient:
    """One service, one token (admin, or a reader's to read). `over(http)` wraps an httpx client that already
    carries its base URL and token (a test's `svc.client()`)."""

    def __init__(self, server: str, token: str | None, *, timeout: float = 120.0,
                 cache_dir: Path | None = None, http: httpx.Client | None = None) -> None:  # fmt: skip
        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = http or httpx.Client(base_url=self.server, headers=headers, timeout=timeout)
        key = hashlib.sha256(self.server.encode()).hexdigest()[:16]
        self.cache = (cache_dir or Path(user_cache_dir("dnas")) / "tables") / key

    @classmethod
    def over(cls, http: httpx.Client, cache_dir: Path | None = None) -> ServiceClient:
        return cls(str(http.base_url), None, cache_dir=cache_dir, http=http)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- any call ------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceError(f"cannot reach the service at {self.http.base_url}: {exc}") from None
        if resp.status_code >= 400:
            raise ServiceError(f"{method} {path} -> HTTP {resp.status_code}: {error_detail(resp)}", resp.status_code)
        return resp

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # ---- devices and tokens --------------------------------------------------------------------------------
    def register_device(self, name: str, platform: str = "linux",
                        properties: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
        """A new device: its id and its agent token (shown this once)."""
        body: dict[str, Any] = {"name": name, "platform": platform}
        if properties is not None:
            body["properties"] = properties
        return self.json("POST", "/v1/devices", json=body)

    def devices(self) -> list[dict[str, Any]]:
        return self.json("GET", "/v1/devices")

    def device(self, device_id: int) -> dict[str, Any]:
        return self.json("GET", f"/v1/devices/{device_id}")

    def reader_token(self, name: str) -> str:
        """A new read-only token (admin only)."""
        return self.json("POST", "/v1/tokens", json={"name": name})["token"]

    # ---- profiling runs ------------------------------------------------------------------------------------
    def start_run(self, device_id: int, space: dict[str, Any], config: dict[str, Any] | None = None,
                  **options: Any) -> dict[str, Any]:  # fmt: skip
        """Queue a profiling run of `space` on the device (`options`: e.g. `anchors`)."""
        body = {"device_id": device_id, "space": space, "config": config or {}, **options}
        return self.json("POST", "/v1/profiling-runs", json=body, timeout=RUN_CREATE_TIMEOUT_S)

    def run(self, run_id: int) -> dict[str, Any]:
        return self.json("GET", f"/v1/profiling-runs/{run_id}")

    def wait_for_run(self, run_id: int, timeout_s: float = 24 * 3600, *, progress: bool = False,
                     poll_s: float = 1.0) -> dict[str, Any]:  # fmt: skip
        """The run once it has finished (published, failed or cancelled), or as it stands at the timeout;
        `not_published(run)` says why there is no table. `progress`: a bar of jobs measured."""
        deadline = time.monotonic() + timeout_s
        run = self._run_despite_blips(run_id, poll_s, deadline)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=run["total"], desc=f"run {run_id}", unit="op")
        try:
            while True:
                if bar is not None:
                    bar.n = run["done"] + run["failed"]
                    bar.set_postfix(failed=run["failed"])
                    bar.refresh()
                if run["status"] in RUN_FINAL or time.monotonic() > deadline:
                    return run
                time.sleep(poll_s)
                run = self._run_despite_blips(run_id, poll_s, deadline)
        finally:
            if bar is not None:
                bar.close()

    def _run_despite_blips(self, run_id: int, poll_s: float, deadline: float) -> dict[str, Any]:
        """The run, asked again while the service is unreachable or says it is (502/503/504), for at most
        UNREACHABLE_GRACE_S and never past the wait's own deadline; then, or on any other refusal, the
        ServiceError."""
        give_up = min(time.monotonic() + UNREACHABLE_GRACE_S, deadline)
        while True:
            try:
                return self.run(run_id)
            except ServiceError as exc:
                if (exc.status is not None and exc.status not in TRANSIENT_STATUSES) or time.monotonic() > give_up:
                    raise
                log.warning("%s; asking again for %.0fs more", exc, give_up - time.monotonic())
            time.sleep(poll_s)

    # ---- tables --------------------------------------------------------------------------------------------
    def table(self, device: int, version: str = "latest", space_hash: str | None = None, *,
              disk_cache: bool = True, precision: str | None = None) -> PublishedTable:  # fmt: skip
        """A table version, parsed; kept on disk by content hash with its ETag (a repeat fetch is a 304, and an
        unreachable service is answered from the disk). `disk_cache=False`: this service's copy, now, or a
        ServiceError (what a check against the live table wants). `precision`: the newest (or the numbered)
        table at that precision, refused if another comes back (a service older than precision ignores it)."""
        params = ({"space_hash": space_hash} if space_hash else {}) | ({"precision": precision} if precision else {})
        path = f"/v1/devices/{device}/latency-tables/{version}"
        if not disk_cache:
            table = PublishedTable.parse(self.request("GET", path, params=params).content, source=f"GET {path}")
            return table.require_precision(precision)
        ref = self.cache / f"device-{device}" / (f"{version}-{space_hash or 'any'}"
                                                 + (f"-{precision}" if precision else "") + ".ref")  # fmt: skip
        blobs = self.cache / "by-hash"
        cached = json.loads(ref.read_text()) if ref.exists() else None
        headers = {"If-None-Match": cached["etag"]} if cached else {}
        try:
            resp = self.http.get(path, headers=headers, params=params, timeout=60)
        except httpx.TransportError as exc:
            if cached:
                log.warning("service unreachable (%s); using cached table %s", exc, cached["sha256"][:12])
                return PublishedTable.from_file(blobs / f"{cached['sha256']}.json").require_precision(precision)
            raise TableError(f"cannot reach {self.server} and no cached copy of device {device} {version}") from None
        if resp.status_code == 304 and cached:
            return PublishedTable.from_file(blobs / f"{cached['sha256']}.json").require_precision(precision)
        if resp.status_code != 200:
            raise TableError(f"GET {self.server}{path} -> HTTP {resp.status_code}: {error_detail(resp)}")
        table = PublishedTable.parse(resp.content, source=f"GET {path}")
        sha = table.content_sha256 or hashlib.sha256(resp.content).hexdigest()
        blobs.mkdir(parents=True, exist_ok=True)
        (blobs / f"{sha}.json").write_bytes(resp.content)  # the served bytes, as served
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(json.dumps({"etag": resp.headers.get("etag", f'"{sha}"'), "sha256": sha}))
        return table.require_precision(precision)

    def table_text(self, device: int, version: str = "latest", *, csv: bool = False, space_hash: str | None = None,
                   precision: str | None = None) -> str:  # fmt: skip
        """A version as served (JSON or CSV), not parsed: what `dnas table get` writes ('latest': the newest, of
        a space and a precision if given)."""
        params = ({"format": "csv"} if csv else {}) | ({"space_hash": space_hash} if space_hash else {})
        params |= {"precision": precision} if precision else {}
        return self.request("GET", f"/v1/devices/{device}/latency-tables/{version}", params=params).text

    def import_table(self, data: bytes, **params: str) -> dict[str, Any]:
        """Publish a table from HW-NAS-Bench's file (admin); `params`: hw_device, dataset, metric, device_name."""
        return self.json("POST", "/v1/latency-tables/import", params=params, content=data,
                         headers={"Content-Type": "application/octet-stream"})  # fmt: skip

    def compare(self, a: str, b: str) -> dict[str, Any]:
        """Two tables ('DEVICE:VERSION') side by side, per op."""
        return self.json("GET", "/v1/latency-tables/compare", params={"a": a, "b": b})

    def compare_png(self, a: str, b: str) -> bytes:
        return self.request("GET", "/v1/latency-tables/compare", params={"a": a, "b": b, "format": "png"}).content

    # ---- whole networks, calibrations, validation reports --------------------------------------------------
    def queue_networks(self, device: int, space: SearchSpace, archs: list[list[str]],
                       config: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
        """Queue networks as one set, measured together in interleaved rounds (search/tables/fidelity.py)."""
        body = {"space": space.to_dict(), "archs": archs, "config": config}
        return self.json("POST", f"/v1/devices/{device}/network-sets", json=body)

    def network_set(self, device: int, set_id: Any) -> dict[str, Any]:
        return self.json("GET", f"/v1/devices/{device}/network-sets/{set_id}")

    def latest_calibration(self, device: int, space_hash: str, precision: str | None = None) -> dict[str, Any]:
        """The newest calibration of the device for this space (and precision); TableError if there is none."""
        params = {"space_hash": space_hash} | ({"precision": precision} if precision else {})
        try:
            return self.json("GET", f"/v1/devices/{device}/calibrations/latest", params=params)
        except ServiceError as exc:
            raise TableError(f"no calibration for device {device}: {exc}") from None

    def store_calibration(self, device: int, body: dict[str, Any]) -> dict[str, Any]:
        return self.json("POST", f"/v1/devices/{device}/calibrations", json=body)

    def store_validation(self, device: int, report: dict[str, Any]) -> dict[str, Any]:
        return self.json("POST", f"/v1/devices/{device}/validations", json=report)
