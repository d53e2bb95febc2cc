"""Request and response bodies. Everything an agent or user sends is validated here, before any export or
write, with bounds that refuse nonsense (NaN, infinite or negative latencies, absurd run counts)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Name = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._\-]*$")
Platform = Literal["android", "ios", "linux", "macos", "windows", "other"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- devices ----------------------------------------------------------------------------------------------
class DeviceCreate(Strict):
    name: str = Name
    platform: Platform
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("properties")
    @classmethod
    def _small(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(v)) > 16_384:
            raise ValueError("properties must serialise to at most 16 KiB")
        return v


class DeviceUpdate(Strict):
    name: str | None = Name
    properties: dict[str, Any] | None = None


class DevicePublic(BaseModel):
    id: int
    name: str
    platform: str
    properties: dict[str, Any]
    fingerprint: dict[str, Any] | None
    created_at: datetime
    last_seen_at: datetime | None
    retired_at: datetime | None


class DeviceCreated(DevicePublic):
    agent_token: str = Field(description="Shown once: the device's agent authenticates with it.")


class Fingerprint(Strict):
    model: str | None = Field(default=None, max_length=200)
    soc: str | None = Field(default=None, max_length=200)
    os: str | None = Field(default=None, max_length=200)
    runtime: str | None = Field(default=None, max_length=100)
    runtime_version: str | None = Field(default=None, max_length=100)
    cores: int | None = Field(default=None, ge=1, le=1024)
    extra: dict[str, Any] = Field(default_factory=dict)


# ---- measurement config -----------------------------------------------------------------------------------
class MeasureConfig(Strict):
    """How an op is measured. Two tables are comparable only when their configs hash equal."""

    runtime: Literal["onnxruntime"] = "onnxruntime"
    threads: int = Field(default=1, ge=1, le=64)
    precision: Literal["fp32"] = "fp32"
    warmup: int = Field(default=10, ge=0, le=1000)
    runs: int = Field(default=50, ge=1, le=10_000)

    @property
    def hash(self) -> str:
        blob = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


class SpaceRequest(Strict):
    """A named space with its parameters; or pass a full resolved space (as `dnas space show` prints)."""

    name: str = Field(default="fbnet", max_length=64)
    resolution: int = Field(default=224, ge=16, le=1024)
    width: float = Field(default=1.0, gt=0, le=4)
    num_classes: int = Field(default=1000, ge=1, le=100_000)
    head_c: int | None = Field(default=None, ge=8, le=8192)
    candidates: list[str] | None = Field(default=None, min_length=1, max_length=32)


class RunCreate(Strict):
    device_id: int = Field(ge=1, le=2**31 - 1)
    space: dict[str, Any] = Field(description="SpaceRequest fields, or a full space with 'stages'.")
    config: MeasureConfig = Field(default_factory=MeasureConfig)


class RunPublic(BaseModel):
    id: int
    device_id: int
    status: str
    total: int
    done: int
    failed: int
    space_hash: str
    config: dict[str, Any]
    config_hash: str
    table_version: int | None
    created_at: datetime
    finished_at: datetime | None
    errors: list[str] = Field(default_factory=list)


# ---- agent protocol ---------------------------------------------------------------------------------------
class LeaseRequest(Strict):
    wait_seconds: float = Field(default=20.0, ge=0, le=120)


class LeasedJob(BaseModel):
    job_id: int
    lease_token: str
    lease_expires_at: datetime
    lease_seconds: float
    attempt: int
    op_key: str
    op_spec: dict[str, Any]
    model_url: str
    model_sha256: str
    model_bytes: int
    input_shape: list[int]
    config: dict[str, Any]


class LeaseProof(Strict):
    lease_token: str = Field(min_length=8, max_length=128)


PositiveUs = Field(gt=0, le=3.6e9, allow_inf_nan=False)


class ResultIn(LeaseProof):
    median_us: float = PositiveUs
    mean_us: float = PositiveUs
    p10_us: float = PositiveUs
    p90_us: float = PositiveUs
    std_us: float = Field(ge=0, le=3.6e9, allow_inf_nan=False)
    n: int = Field(ge=1, le=1_000_000)
    samples_us: list[float] | None = Field(default=None, max_length=100_000)
    context: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ordered(self) -> ResultIn:
        if not self.p10_us <= self.median_us <= self.p90_us:
            raise ValueError("expected p10_us <= median_us <= p90_us")
        if self.samples_us is not None and not all(0 < s < 3.6e9 for s in self.samples_us):
            raise ValueError("samples_us must be finite and positive")
        return self


class FailureIn(LeaseProof):
    reason: str = Field(min_length=1, max_length=4000)


class Ack(BaseModel):
    job_id: int
    status: str
    replayed: bool = False
    measurement_id: int | None = None


# ---- tables ----------------------------------------------------------------------------------------------
class TableSummary(BaseModel):
    device_id: int
    version: int
    space_hash: str
    config_hash: str
    content_sha256: str
    created_at: datetime
    entries: int


class TokenCreate(Strict):
    name: str = Name


class TokenCreated(BaseModel):
    id: int
    name: str
    role: str
    token: str = Field(description="Shown once.")
