"""The published latency table: the one format the service serves and every client reads, as a pydantic model.

The service builds a version with it (profiler_service/tables.py) and declares it as the route's response
model; the client parses a fetched or saved table into it once, and what a prediction needs (the space, the
ops' medians, the rule) is worked out once per table and kept, not on every `predict_us` in a search loop.

The bytes are the contract: a version's ETag is the SHA-256 of its JSON, fixed at publication, and a table
saved to a file is read back as it was written. So the model keeps what it was given: it dumps only the
fields that were set, in the order the service has always written them, and numbers keep their type (an
`int` median in a hand-made file stays an `int`, so its content hash does not change). `to_json()` is the
served form; tests/test_table_schema.py holds a published table to a byte-exact round trip.

No torch here: the service and the dashboard read tables too.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from search.space.macro import SearchSpace
from search.space.quantize import dtype_of
from search.tables.predict import PLAIN, PLAIN_DESCRIPTION, PredictionRule

Number = int | float  # as given: a float stays a float, an int an int (see the module docstring)


class TableError(ValueError):
    """The table cannot drive this search; the message names what is missing or wrong."""


class _Part(BaseModel):
    """A part of the published form: fields it does not know are kept (a newer service may add some)."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)


class TableDevice(_Part):
    """The device as it was when the version was published (its name then, its fingerprint)."""

    id: int | None = None
    name: str | None = None
    platform: str | None = None
    fingerprint: dict[str, Any] | None = None


class Anchor(_Part):
    """A whole network measured with the ops, to fit the rule's constant and per-op term
    (search/tables/predict.py)."""

    arch: list[str]
    measured_us: Number
    sum_in_network_us: Number | None = None
    computing_ops: int | None = None  # its ops but identity skips (overhead-v2): what the per-op term counts
    key: str | None = None


class Prediction(_Part):
    """How the table predicts a network: the rule, what it was fitted from, and how the fit's inputs were
    measured (`measured_as`, `same_rounds`, `sessions`). A table without one predicts with the plain sum."""

    rule: str = PLAIN
    overhead_us: dict[str, Number] | None = None
    constant_us: Number | None = None
    per_op_us: Number | None = None  # overhead-v2: added to every op that computes; 0 when not supported
    description: str | None = None
    constant_from: str | None = None
    constant_spread_us: Number | None = None
    constant_se_us: Number | None = None
    call_overhead_us: Number | None = None
    per_op: dict[str, Any] | None = None  # how per_op_us was fitted and whether the anchors supported it
    anchors: list[Anchor] = Field(default_factory=list)
    measured_as: str | None = None
    same_rounds: bool | None = None
    sessions: int | None = None

    @classmethod
    def plain(cls) -> Prediction:
        """The plain sum, as a table published before probes states it."""
        return cls(rule=PLAIN, description=PLAIN_DESCRIPTION)


class Entry(_Part):
    """One op: its spec (search/space/opspec.py) and the statistics of its measurement."""

    key: str
    spec: dict[str, Any] | None = None  # always published; a hand-made table may price ops by key alone
    median_us: Number
    mean_us: Number | None = None
    p10_us: Number | None = None
    p90_us: Number | None = None
    std_us: Number | None = None
    n: int | None = None
    context: dict[str, Any] | None = None


class PublishedTable(_Part):
    """One table version. Only `space` and `entries` are required, so a hand-made table file is one too.

    `calibration` is never served: the search sets it (with `with_calibration`) when it applied one, so its
    outputs record it with the table's provenance."""

    device: TableDevice | None = None
    version: int | None = None
    created_at: str | None = None  # as published (ISO 8601): kept as text, so the bytes do not change
    space_hash: str | None = None
    space_doc: dict[str, Any] = Field(alias="space")  # as published; `space` is the SearchSpace it describes
    config_hash: str | None = None
    config: dict[str, Any] | None = None
    content_sha256: str | None = None
    unit: str = "microseconds"
    prediction: Prediction = Field(default_factory=Prediction)
    entries: list[Entry]
    # An imported table's source (profiler_service/imports.py), served as "provenance"; `provenance` (below) is
    # what a search's outputs record about any table.
    imported_from: dict[str, Any] | None = Field(default=None, alias="provenance")
    calibration: dict[str, Any] | None = None

    JSON_FORMAT: ClassVar[dict[str, Any]] = {"separators": (",", ":"), "allow_nan": False}  # the served bytes' form

    # ---- reading --------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, payload: dict[str, Any] | str | bytes, source: str = "the table") -> PublishedTable:
        """A table from its JSON (text or parsed); a malformed one is a TableError naming what is wrong."""
        try:
            if isinstance(payload, str | bytes):
                return cls.model_validate_json(payload)
            return cls.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise TableError(
                f"{source} is not a latency table ({where}: {first['msg']}; a table needs 'space' and 'entries', "
                "as the service serves)"
            ) from None

    @classmethod
    def from_file(cls, path: Path) -> PublishedTable:
        try:
            text = Path(path).read_text()
            json.loads(text)
        except (OSError, ValueError) as exc:
            raise TableError(f"cannot read latency table {path}: {exc}") from None
        return cls.parse(text, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The table as it was given or published (a fresh copy: changing it changes nothing here)."""
        return self.model_dump(exclude_unset=True, by_alias=True)

    def to_json(self) -> str:
        """The served bytes: compact, NaN refused (JSON has none), fields in the published order."""
        return json.dumps(self.to_dict(), **self.JSON_FORMAT)

    def with_calibration(self, applied: dict[str, Any]) -> PublishedTable:
        """This table, recording the calibration a search applied to it (the numbers stay the table's)."""
        return self.model_copy(update={"calibration": applied})

    # ---- what predictions need, worked out once per table ---------------------------------------------
    @cached_property
    def space(self) -> SearchSpace:
        return SearchSpace.from_dict(self.space_doc)

    @cached_property
    def medians(self) -> dict[str, float]:
        return {e.key: float(e.median_us) for e in self.entries}

    @cached_property
    def rule(self) -> PredictionRule:
        """How this table predicts a network (search/tables/predict.py); older tables: the plain sum."""
        try:
            return PredictionRule.from_published(self.prediction.model_dump(exclude_unset=True), self.dtype)
        except ValueError as exc:
            raise TableError(str(exc)) from None

    def predict_us(self, arch: list[str]) -> float:
        """The table's prediction for one architecture of its space, by its own rule."""
        return self.rule.predict(self.space, arch, self.medians)

    # ---- precision: one chip in fp32 and in int8 is two targets ---------------------------------------
    @property
    def precision(self) -> str:
        """What its ops were measured at (fp32 for every table before int8 existed)."""
        return str((self.config or {}).get("precision", "fp32"))

    @property
    def dtype(self) -> str:
        """The dtype of its op keys: a space's ops are looked up at this dtype."""
        try:
            return dtype_of(self.precision)
        except ValueError as exc:
            raise TableError(f"{exc}; upgrade dnas to read this table") from None

    def require_precision(self, precision: str | None) -> PublishedTable:
        """Refuse a table of another precision than asked: an int8 search never runs on an fp32 table."""
        if precision is not None and self.precision != precision:
            raise TableError(
                f"this is a {self.precision} table (device {self.device_info.get('id')}, version {self.version}); "
                f"a {precision} search or check needs a {precision} table: profile the device with --precision "
                f"{precision}"
            )
        return self

    @property
    def anchors(self) -> list[tuple[list[str], float]]:
        """The anchor networks and what each measured when the table was profiled."""
        return [(a.arch, float(a.measured_us)) for a in self.prediction.anchors]

    @property
    def device_info(self) -> dict[str, Any]:
        return self.device.model_dump(exclude_unset=True) if self.device else {}

    @property
    def provenance(self) -> dict[str, Any]:
        """What every output records, so an architecture can be traced to the measurements behind it."""
        return {
            "device": self.device.model_dump(exclude_unset=True) if self.device else None,
            "version": self.version,
            "content_sha256": self.content_sha256,
            "space_hash": self.space_hash,
            "config": self.config,
            "precision": self.precision,
            "prediction_rule": self.prediction.rule,
            "calibration": self.calibration,  # set by the search when it applied one
        }

    @property
    def content_hash(self) -> str:
        """The table's identity: the service's content hash, or (a hand-made file without one) a sha256 of its
        space and entries. A resumed search refuses a table with another hash."""
        if self.content_sha256:
            return self.content_sha256
        entries = [e.model_dump(exclude_unset=True) for e in self.entries]
        blob = json.dumps({"space": self.space_doc, "entries": entries}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()
