"""Latency tables on the search side: fetch over REST (cached on disk by ETag and content hash, so a second
run works offline), or read a file; check the table prices the whole space; turn it into a tensor."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from platformdirs import user_cache_dir

from search.space.enumerate import enumerate_ops
from search.space.macro import SearchSpace
from search.space.quantize import dtype_of
from search.tables import calibration
from search.tables.predict import PredictionRule

log = logging.getLogger("dnas.search")


class TableError(ValueError):
    """The table cannot drive this search; the message names what is missing or wrong."""


@dataclass(frozen=True)
class LatencyTable:
    payload: dict[str, Any]

    @property
    def space(self) -> SearchSpace:
        return SearchSpace.from_dict(self.payload["space"])

    @property
    def precision(self) -> str:
        """What its ops were measured at (fp32 for every table before int8 existed)."""
        return str((self.payload.get("config") or {}).get("precision", "fp32"))

    @property
    def dtype(self) -> str:
        """The dtype of its op keys: a space's ops are looked up at this dtype."""
        try:
            return dtype_of(self.precision)
        except ValueError as exc:
            raise TableError(f"{exc}; upgrade dnas to read this table") from None

    def require_precision(self, precision: str | None) -> LatencyTable:
        """Refuse a table of another precision than asked: an int8 search never runs on an fp32 table."""
        if precision is not None and self.precision != precision:
            raise TableError(
                f"this is a {self.precision} table (device {(self.payload.get('device') or {}).get('id')}, version "
                f"{self.payload.get('version')}); a {precision} search or check needs a {precision} table: "
                f"profile the device with --precision {precision}"
            )
        return self

    @property
    def medians(self) -> dict[str, float]:
        return {e["key"]: float(e["median_us"]) for e in self.payload["entries"]}

    @property
    def rule(self) -> PredictionRule:
        """How this table predicts a network (search/tables/predict.py); older tables: the plain sum."""
        try:
            return PredictionRule.from_payload(self.payload)
        except ValueError as exc:
            raise TableError(str(exc)) from None

    def predict_us(self, arch: list[str]) -> float:
        """The table's prediction for one architecture of its space, by its own rule."""
        return self.rule.predict(self.space, arch, self.medians)

    @property
    def provenance(self) -> dict[str, Any]:
        """What every output records, so an architecture can be traced to the measurements behind it."""
        p = self.payload
        return {
            "device": p.get("device"),
            "version": p.get("version"),
            "content_sha256": p.get("content_sha256"),
            "space_hash": p.get("space_hash"),
            "config": p.get("config"),
            "precision": self.precision,
            "prediction_rule": (p.get("prediction") or {}).get("rule", "sum"),
            "calibration": p.get("calibration"),  # set by the search when it applied one
        }

    @property
    def content_hash(self) -> str:
        """The table's identity: the service's content hash, or (a hand-made file without one) a sha256 of its
        space and entries. A resumed search refuses a table with another hash."""
        sha = self.payload.get("content_sha256")
        if sha:
            return str(sha)
        blob = json.dumps({"space": self.payload["space"], "entries": self.payload["entries"]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    @classmethod
    def from_file(cls, path: Path) -> LatencyTable:
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise TableError(f"cannot read latency table {path}: {exc}") from None
        if not isinstance(payload, dict) or "entries" not in payload or "space" not in payload:
            raise TableError(f"{path} is not a latency table (needs 'space' and 'entries', as the service serves)")
        return cls(payload)


@dataclass(frozen=True)
class LatencyLUT:
    """LUT[l, k]: microseconds of candidate k at searchable layer l; `fixed_us`: stem, head conv, pool, fc."""

    table: torch.Tensor
    fixed_us: float

    def expected(self, probs: torch.Tensor) -> torch.Tensor:
        """E[LAT] under per-layer probabilities [..., L, K] (eq. 9 with m = P)."""
        return (probs * self.table).sum(dim=(-2, -1)) + self.fixed_us

    def of_arch(self, indices: list[int]) -> float:
        return float(sum(self.table[layer, k] for layer, k in enumerate(indices))) + self.fixed_us


def build_lut(space: SearchSpace, table: LatencyTable) -> LatencyLUT:
    """Every (layer, candidate) and fixed layer must be priced; a missing op is named, not guessed."""
    if table.payload.get("space_hash") and table.payload["space_hash"] != space.hash:
        log.warning(
            "table was measured for space %s; searching space %s", table.payload["space_hash"][:12], space.hash[:12]
        )
    medians = table.medians
    en = enumerate_ops(space, table.dtype)
    missing = [k for k in en.ops if k not in medians]
    if missing:
        raise TableError(
            f"the latency table does not price {len(missing)} op(s) of this space, e.g. {missing[0]}; "
            "profile this space on the device first (dnas profile)"
        )
    rule = table.rule  # each op's in-network time, and the constant a network pays once
    cost = {key: rule.in_network_us(spec, medians[key]) for key, spec in en.ops.items()}
    lut = torch.tensor([[cost[k] for k in row] for row in en.layer_keys], dtype=torch.float64)
    fixed = sum(cost[k] for k in en.fixed_keys.values()) + rule.constant_us
    return LatencyLUT(table=lut.float(), fixed_us=fixed)


class TableClient:
    """GET a table version; keep it on disk by content hash and remember the ETag, so repeat fetches are 304s
    and a search can run with the service unreachable."""

    def __init__(self, server: str, token: str | None, cache_dir: Path | None = None) -> None:
        self.server = server.rstrip("/")
        self.token = token
        key = hashlib.sha256(self.server.encode()).hexdigest()[:16]
        self.cache = (cache_dir or Path(user_cache_dir("dnas")) / "tables") / key

    def _paths(self, device: int, version: str) -> tuple[Path, Path]:
        ref = self.cache / f"device-{device}" / f"{version}.ref"
        return ref, self.cache / "by-hash"

    def fetch(
        self, device: int, version: str = "latest", space_hash: str | None = None, precision: str | None = None
    ) -> LatencyTable:
        """`precision`: the newest (or the numbered) table at that precision, refused if the service sends
        another (a service older than precision support ignores the parameter)."""
        ref, blobs = self._paths(device, f"{version}-{space_hash or 'any'}" + (f"-{precision}" if precision else ""))
        cached = json.loads(ref.read_text()) if ref.exists() else None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if cached:
            headers["If-None-Match"] = cached["etag"]
        params = ({"space_hash": space_hash} if space_hash else {}) | ({"precision": precision} if precision else {})
        url = f"{self.server}/v1/devices/{device}/latency-tables/{version}"
        try:
            resp = httpx.get(url, headers=headers, params=params, timeout=60)
        except httpx.TransportError as exc:
            if cached:
                log.warning("service unreachable (%s); using cached table %s", exc, cached["sha256"][:12])
                table = LatencyTable(json.loads((blobs / f"{cached['sha256']}.json").read_text()))
                return table.require_precision(precision)
            raise TableError(f"cannot reach {self.server} and no cached copy of device {device} {version}") from None
        if resp.status_code == 304 and cached:
            table = LatencyTable(json.loads((blobs / f"{cached['sha256']}.json").read_text()))
            return table.require_precision(precision)
        if resp.status_code != 200:
            try:
                detail = resp.json().get("detail")
            except ValueError:
                detail = resp.text
            raise TableError(f"GET {url} -> HTTP {resp.status_code}: {detail}")
        payload = resp.json()
        sha = payload["content_sha256"]
        blobs.mkdir(parents=True, exist_ok=True)
        (blobs / f"{sha}.json").write_text(json.dumps(payload))
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(json.dumps({"etag": resp.headers.get("etag", f'"{sha}"'), "sha256": sha}))
        return LatencyTable(payload).require_precision(precision)


def apply_calibration(lut: LatencyLUT, model: dict[str, Any], space: SearchSpace | None = None) -> LatencyLUT:
    """Spread a calibration over the LUT; raw tables are never changed, this is applied on the client.
    - `family-v1` (search/tables/calibration.py): each (layer, candidate) scaled by its block family's factor, and
      the shared layers replaced by the intercept. Needs the space, to know each candidate's family.
    - `linear` (older calibrations): `measured = scale * sum + offset`, every op scaled."""
    if model.get("kind") == calibration.KIND:
        if space is None:
            raise TableError("a family calibration needs the search space to be applied")
        factors = model["factors"]
        scale = torch.tensor(
            [[factors[calibration.family(slot.op(c, space.batch)) or "other"] for c in space.candidates]
             for slot in space.slots], dtype=lut.table.dtype)  # fmt: skip
        if not all(0 <= float(f) < 100 for f in factors.values()):
            raise TableError(f"calibration factors {factors} are not plausible")
        out = LatencyLUT(table=lut.table * scale, fixed_us=float(model["intercept_us"]))
        fastest = out.of_arch(out.table.argmin(dim=1).tolist())
        if fastest <= 0:  # log(LAT) would be undefined: the calibration was fitted far outside this space
            raise TableError(f"calibration predicts {fastest:.1f} us for the fastest network of the space; not applied")
        return out
    if model.get("kind") != "linear":
        raise TableError(f"unknown calibration kind {model.get('kind')!r}")
    scale, offset = float(model["scale"]), float(model["offset_us"])
    if not 0 < scale < 100:
        raise TableError(f"calibration scale {scale} is not plausible")
    return LatencyLUT(table=lut.table * scale, fixed_us=lut.fixed_us * scale + offset)


def fetch_calibration(
    server: str, token: str | None, device: int, space_hash: str, precision: str | None = None
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    params = {"space_hash": space_hash} | ({"precision": precision} if precision else {})
    resp = httpx.get(f"{server.rstrip('/')}/v1/devices/{device}/calibrations/latest", headers=headers,
                     params=params, timeout=60)  # fmt: skip
    if resp.status_code != 200:
        raise TableError(f"no calibration for device {device}: HTTP {resp.status_code} {resp.text[:200]}")
    return resp.json()
