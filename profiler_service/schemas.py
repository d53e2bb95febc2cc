"""Request and response bodies. Everything an agent or user sends is validated here, before any export or
write, with bounds that refuse nonsense (NaN, infinite or negative latencies, absurd run counts)."""

from __future__ import annotations

import hashlib
import json
import statistics
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_serializer, model_validator

from db.states import RunStatus
from search.space import quantize
from search.space.options import SpaceOptions
from search.tables.predict import N_ANCHORS

Name = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._\-]*$")
Platform = Literal["android", "ios", "linux", "macos", "windows", "other"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


KiB = 1024


def at_most(limit: int):  # type: ignore[no-untyped-def]
    def check(value: Any) -> Any:
        if len(json.dumps(value, separators=(",", ":"))) > limit:
            raise ValueError(f"must serialise to at most {limit // KiB} KiB of JSON")
        return value

    return check


def JsonObject(limit: int) -> Any:
    """A free-form JSON object with a size cap. NaN, Infinity and unstorable strings never get this far: the
    strict body parser (api/strict_json.py) refuses them for every route."""
    return Annotated[dict[str, Any], AfterValidator(at_most(limit))]


# Limits on what callers store (device_agents/PROTOCOL.md lists them).
PROPERTIES_LIMIT = 16 * KiB
EXTRA_LIMIT = 16 * KiB
CONTEXT_LIMIT = 64 * KiB
SPACE_LIMIT = 256 * KiB


# ---- devices ----------------------------------------------------------------------------------------------
Properties = JsonObject(PROPERTIES_LIMIT)
Extra = JsonObject(EXTRA_LIMIT)
Context = JsonObject(CONTEXT_LIMIT)
SpaceObject = JsonObject(SPACE_LIMIT)


class DeviceCreate(Strict):
    name: str = Name
    platform: Platform
    properties: Properties = Field(default_factory=dict)


class DeviceUpdate(Strict):
    """Either field alone, or both. `properties` replaces the whole object."""

    name: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._\-]*$")
    properties: Properties | None = None


class DevicePublic(BaseModel):
    id: int
    name: str
    platform: str
    properties: dict[str, Any]
    fingerprint: dict[str, Any] | None
    created_at: datetime
    last_seen_at: datetime | None
    retired_at: datetime | None
    agent_protocol: int | None = Field(default=None, description="Protocol version its agent last spoke (1 or 2).")
    agent_problem: dict[str, Any] | None = Field(
        default=None,
        description="Why its agent cannot work now, as it last said (`problem`, `reported_at`, `retry_at`); "
        "cleared by its next fingerprint.",
    )


class DeviceCreated(DevicePublic):
    agent_token: str = Field(description="Shown once: the device's agent authenticates with it.")


class Fingerprint(Strict):
    model: str | None = Field(default=None, max_length=200)
    soc: str | None = Field(default=None, max_length=200)
    os: str | None = Field(default=None, max_length=200)
    runtime: str | None = Field(default=None, max_length=100)
    runtime_version: str | None = Field(default=None, max_length=100)
    cores: int | None = Field(default=None, ge=1, le=1024)
    extra: Extra = Field(default_factory=dict)


# ---- measurement config -----------------------------------------------------------------------------------
def _rounds_for(runs: int) -> int:
    """Rounds for a protocol-1 style request that gives only a total: the most rounds (up to 20) that divide it,
    so the stored config times exactly what was asked."""
    return max(r for r in range(1, min(20, runs) + 1) if runs % r == 0)


class MeasureConfig(Strict):
    """How an op is measured. Two tables are comparable only when their configs hash equal.

    A batch agent (protocol 2) opens every model of a batch, runs `warmup` untimed inferences on each, then
    measures `rounds` interleaved rounds of `runs_per_round` timed runs (search/measurement/rounds.py).
    A single-job agent (protocol 1) times `runs` = rounds x runs_per_round runs in one block. Give any two of
    the three (or none: 20 x 3); given only `runs`, the rounds are the most (up to 20) that divide it. A request
    whose numbers do not multiply out is refused: the stored config always times exactly what was asked."""

    runtime: Literal["onnxruntime"] = "onnxruntime"
    threads: int = Field(default=1, ge=1, le=64)
    precision: Literal["fp32", "int8"] = Field(
        default="fp32", description="fp32, or int8: every op, probe and anchor quantized by the service's recipe."
    )
    quantization: dict[str, Any] | None = Field(
        default=None,
        description="int8 only, filled in by the service: the recipe (search/space/quantize.py). Part of the hash, "
        "so a table never mixes recipes. A client may send it back; another recipe than the service's is refused.",
    )
    warmup: int = Field(default=10, ge=0, le=1000)
    runs: int | None = Field(default=None, ge=1, le=10_000, description="Timed runs per op in all.")
    rounds: int | None = Field(default=None, ge=1, le=1000, description="Interleaved rounds (default 20).")
    runs_per_round: int | None = Field(default=None, ge=1, le=1000, description="Timed runs per visit (default 3).")

    @model_validator(mode="after")
    def _consistent(self) -> MeasureConfig:
        runs, rounds, per = self.runs, self.rounds, self.runs_per_round
        if runs is None:
            rounds, per = rounds or 20, per or 3
        elif rounds is None and per is None:
            rounds = _rounds_for(runs)
            per = runs // rounds
        elif rounds is None:
            assert per is not None
            if runs % per:
                raise ValueError(f"runs={runs} is not a whole number of rounds of runs_per_round={per}")
            rounds = runs // per
        elif per is None:
            if runs % rounds:
                raise ValueError(f"runs={runs} does not split into rounds={rounds} equal visits")
            per = runs // rounds
        if runs is not None and runs != rounds * per:
            raise ValueError(f"runs={runs} must equal rounds x runs_per_round = {rounds} x {per}")
        if rounds * per > 10_000:
            raise ValueError("rounds x runs_per_round must be at most 10000 timed runs")
        self.rounds, self.runs_per_round, self.runs = rounds, per, rounds * per
        if self.precision == "fp32":
            if self.quantization is not None:
                raise ValueError("quantization applies only to precision int8")
        else:
            current = quantize.recipe()
            if self.quantization is not None and self.quantization != current:
                raise ValueError(f"this service quantizes with recipe {current['name']} (onnxruntime "
                                 f"{current['quantizer_version']}), not the one given")  # fmt: skip
            self.quantization = current
        return self

    @model_serializer(mode="wrap")
    def _drop_unset_recipe(self, handler: Any) -> dict[str, Any]:
        """An fp32 config serialises (and hashes) exactly as before precision had a second value."""
        data = handler(self)
        if data.get("quantization") is None:
            data.pop("quantization", None)
        return data  # type: ignore[no-any-return]

    @property
    def hash(self) -> str:
        blob = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


class SpaceRequest(SpaceOptions):
    """A named space with its parameters; or pass a full resolved space (as `dnas space show` prints). The
    fields and their bounds are search.space.options.SpaceOptions', which every command that takes a space
    shares."""


class RunCreate(Strict):
    device_id: int = Field(ge=1, le=2**31 - 1)
    space: SpaceObject = Field(description="SpaceRequest fields, or a full space with 'stages'.")
    config: MeasureConfig = Field(default_factory=MeasureConfig)
    anchors: int = Field(
        default=N_ANCHORS,
        ge=0,
        le=20,
        description="Whole networks of the space measured with the ops to fit the table's rule.",
    )


class RunPublic(BaseModel):
    id: int
    device_id: int
    status: RunStatus
    total: int
    done: int
    failed: int
    space_hash: str
    config: dict[str, Any]
    config_hash: str
    table_version: int | None
    created_at: datetime
    finished_at: datetime | None
    reason: str | None = Field(default=None, description="Why it failed or was cancelled.")
    errors: list[str] = Field(default_factory=list, description="Failed jobs with their reasons (at most 10).")


# ---- agent protocol ---------------------------------------------------------------------------------------
class LeaseRequest(Strict):
    wait_seconds: float = Field(default=20.0, ge=0, le=120)
    max_jobs: int | None = Field(
        default=None, ge=1, le=1000, description="Ask for a batch of up to this many jobs (protocol 2)."
    )
    protocol: int | None = Field(
        default=None, ge=1, le=2, description="The agent's protocol version (default: 2 with max_jobs, else 1)."
    )

    @property
    def version(self) -> int:
        return self.protocol or (2 if self.max_jobs is not None else 1)


class AgentStatusIn(Strict):
    """What keeps the agent from working, while it retries: shown on the device's page until its next fingerprint."""

    problem: str | None = Field(
        default=None, min_length=1, max_length=2000, description="One line; null clears a problem reported before."
    )
    retry_in_s: float | None = Field(default=None, ge=0, le=86_400, description="When the agent tries again.")


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


class LeasedBatch(BaseModel):
    """Jobs of one group (a profiling run, or a set of networks), to be measured together in interleaved
    rounds. They share one lease token: one heartbeat keeps them all, one POST reports them all."""

    lease_token: str
    lease_expires_at: datetime
    lease_seconds: float
    batch_group: str | None
    seed: int = Field(description="Seeds the rounds' visit orders; recorded in each result's context.")
    group_jobs: int = Field(
        description="Jobs of this group that were runnable at lease time: more than len(jobs) means the group "
        "was split across batches (its table will say it was not measured in one session)."
    )
    config: dict[str, Any]
    jobs: list[LeasedJob]


class LeaseProof(Strict):
    lease_token: str = Field(min_length=8, max_length=128)


PositiveUs = Field(gt=0, le=3.6e9, allow_inf_nan=False)


class ResultStats(Strict):
    median_us: float = PositiveUs
    mean_us: float = PositiveUs
    p10_us: float = PositiveUs
    p90_us: float = PositiveUs
    std_us: float = Field(ge=0, le=3.6e9, allow_inf_nan=False)
    n: int = Field(ge=1, le=1_000_000)
    samples_us: list[float] | None = Field(default=None, max_length=100_000)
    rounds: int | None = Field(default=None, ge=1, le=10_000)
    round_medians_us: list[float] | None = Field(default=None, min_length=1, max_length=10_000)
    estimator: str | None = Field(default=None, max_length=100)
    context: Context = Field(
        default_factory=dict, description="What shaped the numbers (runtime, threads, affinity, ...); at most 64 KiB."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ResultStats:
        if not self.p10_us <= self.median_us <= self.p90_us:
            raise ValueError("expected p10_us <= median_us <= p90_us")
        if self.samples_us is not None and not all(0 < s < 3.6e9 for s in self.samples_us):
            raise ValueError("samples_us must be finite and positive")
        if self.round_medians_us is not None:
            medians = self.round_medians_us
            if not all(0 < s < 3.6e9 for s in medians):
                raise ValueError("round_medians_us must be finite and positive")
            if self.rounds is not None and len(medians) != self.rounds:
                raise ValueError(f"round_medians_us has {len(medians)} values for rounds={self.rounds}")
            if medians and abs(statistics.median(medians) - self.median_us) > 1e-6 * self.median_us + 1e-9:
                raise ValueError("median_us must be the median of round_medians_us (the estimator)")
        return self


class ResultIn(LeaseProof, ResultStats):
    pass


class BatchResult(ResultStats):
    job_id: int = Field(ge=1, le=2**63 - 1)


class BatchResultsIn(LeaseProof):
    results: list[BatchResult] = Field(min_length=1, max_length=1000)


class FailureIn(LeaseProof):
    reason: str = Field(min_length=1, max_length=4000)
    give_back: bool = Field(
        False,
        description="The job was not tried: its device went away or its agent is stopping. It is requeued without "
        "spending an attempt, so a phone that drops off for a while fails no job (protocol 2.1; older agents "
        "leave it out and each give-back costs an attempt).",
    )


class Ack(BaseModel):
    job_id: int
    status: str
    replayed: bool = False
    measurement_id: int | None = None
    detail: str | None = None


class BatchAck(BaseModel):
    acks: list[Ack]


class BatchHeartbeat(BaseModel):
    extended: int
    lease_expires_at: datetime


# ---- tables ----------------------------------------------------------------------------------------------
class TableSummary(BaseModel):
    device_id: int
    version: int
    space_hash: str
    config_hash: str
    precision: str = Field(default="fp32", description="What the table's ops were measured at: fp32 or int8.")
    content_sha256: str = Field(description="SHA-256 of the numbers: two versions with equal numbers share it.")
    etag: str | None = Field(description="SHA-256 of the bytes served (the ETag); None until first read for "
                                         "versions published before migration 0004.")  # fmt: skip
    run_id: int | None
    created_at: datetime
    entries: int


class TokenCreate(Strict):
    name: str = Name


class TokenPublic(BaseModel):
    id: int
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(BaseModel):
    id: int
    name: str
    role: str
    token: str = Field(description="Shown once.")


class AdminTokenRotated(BaseModel):
    token: str = Field(description="The new admin token, shown once. The one that called stopped working.")
    written_to: str | None = Field(description="The admin token file it was also written to, if the service keeps one.")
