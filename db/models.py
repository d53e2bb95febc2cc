"""What the profiler service stores.

Measurements are the asset: they are never updated or deleted, and a latency table only references them.
Jobs carry the lease bookkeeping that lets agents die without losing or doubling work.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from db.states import JOB_PENDING, JobStatus, RunStatus

# Deterministic constraint names, so migrations can drop and alter them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The rows of the claim's partial indexes: jobs still pending. A query is served by them only where its WHERE
# carries this same term with these literals (profiler_service/queue.py `pending()`): SQLite matches the term as
# written, and PostgreSQL cannot prove the predicate from bound parameters once psycopg prepares the statement.
PENDING_STATUSES = tuple(sorted(s.value for s in JOB_PENDING))
PENDING_WHERE = "status IN (" + ", ".join(f"'{s}'" for s in PENDING_STATUSES) + ")"
_PENDING_ONLY = {"postgresql_where": text(PENDING_WHERE), "sqlite_where": text(PENDING_WHERE)}

KEY_LEN = 200  # op keys are readable strings, well under this
HASH_LEN = 64  # sha256 hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class ServiceSetting(Base):
    """Small service-wide state, such as the admin token's hash, shared by every worker."""

    __tablename__ = "service_settings"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class UiSession(Base):
    """A dashboard session: the cookie holds a random secret, this row only its SHA-256 and the token digest it
    signed in with. A database reader can therefore not make a cookie (no key to sign with, no secret to copy),
    and signing out deletes the row, which ends the session on every worker at once."""

    __tablename__ = "ui_sessions"
    id_hash: Mapped[str] = mapped_column(String(HASH_LEN), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(HASH_LEN), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class ApiToken(Base):
    """Read-only tokens for search clients, minted by an admin; only the hash is kept."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16), default="reader")
    token_hash: Mapped[str] = mapped_column(String(HASH_LEN), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    platform: Mapped[str] = mapped_column(String(32))
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    fingerprint: Mapped[dict[str, Any] | None]
    token_hash: Mapped[str] = mapped_column(String(HASH_LEN), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime | None]
    retired_at: Mapped[datetime | None]
    agent_protocol: Mapped[int | None]  # the protocol version its agent last spoke (1: single jobs, 2: batches)
    # Why its agent cannot work now ({"problem", "reported_at", "retry_at"}), as it said; its fingerprint clears it.
    agent_problem: Mapped[dict[str, Any] | None]


class Operator(Base):
    """One unique op spec; its ONNX file is content-addressed by `key` in the artifact directory."""

    __tablename__ = "operators"
    key: Mapped[str] = mapped_column(String(KEY_LEN), primary_key=True)
    spec: Mapped[dict[str, Any]]
    onnx_sha256: Mapped[str | None] = mapped_column(String(HASH_LEN))
    onnx_bytes: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProfilingRun(Base):
    __tablename__ = "profiling_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    space_hash: Mapped[str] = mapped_column(String(HASH_LEN))
    space: Mapped[dict[str, Any]]
    config_hash: Mapped[str] = mapped_column(String(HASH_LEN))
    config: Mapped[dict[str, Any]]
    # running -> published | failed | cancelled, each stored when it happens (profiler_service/lifecycle.py, by
    # the request, or by the sweep when the worker that should have done it died); never changed after.
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.RUNNING, index=True)  # db/states.py
    total: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(Text)  # why it failed or was cancelled
    operators: Mapped[list[RunOperator]] = relationship(back_populates="run", cascade="all, delete-orphan")


class RunOperator(Base):
    """Which ops a run needs; the same op may be needed by many runs and measured once."""

    __tablename__ = "run_operators"
    run_id: Mapped[int] = mapped_column(ForeignKey("profiling_runs.id"), primary_key=True)
    op_key: Mapped[str] = mapped_column(ForeignKey("operators.key"), primary_key=True)
    run: Mapped[ProfilingRun] = relationship(back_populates="operators")


class Job(Base):
    """Measuring one op on one device under one config. `generation` lets a user ask for a re-measurement
    without ever overwriting the old one."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("device_id", "op_key", "config_hash", "generation"),
        Index("ix_jobs_claim", "device_id", "status", "lease_expires_at"),
        Index("ix_jobs_batch", "device_id", "batch_group"),
        Index("ix_jobs_expiry", "status", "lease_expires_at"),  # the sweep's dead-lease scan, across devices
        # The claim (profiler_service/queue.py): a device's oldest pending job, and its group's pending jobs in
        # id order, without visiting the done ones (migration 0009 says why).
        Index("ix_jobs_pending", "device_id", "id", **_PENDING_ONLY),
        Index("ix_jobs_pending_group", "batch_group", "device_id", "id", **_PENDING_ONLY),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    op_key: Mapped[str] = mapped_column(ForeignKey("operators.key"))
    config_hash: Mapped[str] = mapped_column(String(HASH_LEN))
    config: Mapped[dict[str, Any]]
    generation: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)  # db/states.py: JobStatus
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    lease_token: Mapped[str | None] = mapped_column(String(HASH_LEN))
    lease_expires_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # Jobs measured together: one profiling run, or one set of networks. A batch lease hands out jobs of one
    # group, so everything a prediction compares was measured in the same interleaved rounds. The group is
    # the claim's business only (profiler_service/queue.py names it): which run a job serves is `run_id`.
    batch_group: Mapped[str | None] = mapped_column(String(64))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("profiling_runs.id"), index=True)  # None: a network's
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Measurement(Base):
    """Robust statistics of one job's timed runs, in microseconds, with everything that shaped them."""

    __tablename__ = "measurements"
    __table_args__ = (UniqueConstraint("job_id", "attempt"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    attempt: Mapped[int]
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    op_key: Mapped[str] = mapped_column(ForeignKey("operators.key"))
    config_hash: Mapped[str] = mapped_column(String(HASH_LEN))
    median_us: Mapped[float] = mapped_column(Float)
    mean_us: Mapped[float] = mapped_column(Float)
    p10_us: Mapped[float] = mapped_column(Float)
    p90_us: Mapped[float] = mapped_column(Float)
    std_us: Mapped[float] = mapped_column(Float)
    n: Mapped[int]
    samples_us: Mapped[list[Any] | None]
    rounds: Mapped[int | None]  # interleaved rounds (None: one block of runs, protocol 1)
    round_medians_us: Mapped[list[Any] | None]  # kept so even rounds can be checked against odd ones
    estimator: Mapped[str | None] = mapped_column(String(100))
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


Index("ix_measurements_lookup", Measurement.device_id, Measurement.config_hash, Measurement.op_key)


class LatencyTable(Base):
    """An immutable, versioned snapshot: written once in one transaction with all its entries."""

    __tablename__ = "latency_tables"
    __table_args__ = (UniqueConstraint("device_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    version: Mapped[int]
    run_id: Mapped[int | None] = mapped_column(ForeignKey("profiling_runs.id"))
    space_hash: Mapped[str] = mapped_column(String(HASH_LEN), index=True)
    space: Mapped[dict[str, Any]]
    config_hash: Mapped[str] = mapped_column(String(HASH_LEN))
    config: Mapped[dict[str, Any]]
    fingerprint: Mapped[dict[str, Any] | None]
    # How the table predicts a network: per-shape call overhead and the network constant from anchor
    # networks measured in the same rounds (search/tables/predict.py). None: a plain sum (tables before 0003).
    prediction: Mapped[dict[str, Any] | None]
    content_sha256: Mapped[str] = mapped_column(String(HASH_LEN))  # of the numbers: equal tables hash equal
    # The published JSON, byte for byte as served, and its SHA-256 (the ETag): fixed at publication, device
    # name included. Deferred: looking a version up does not load it. None: published before 0004, filled in
    # on its first read.
    payload: Mapped[str | None] = mapped_column(Text, deferred=True)
    payload_sha256: Mapped[str | None] = mapped_column(String(HASH_LEN))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    entries: Mapped[list[LatencyTableEntry]] = relationship(back_populates="table", order_by="LatencyTableEntry.op_key")


class LatencyTableEntry(Base):
    __tablename__ = "latency_table_entries"
    table_id: Mapped[int] = mapped_column(ForeignKey("latency_tables.id"), primary_key=True)
    op_key: Mapped[str] = mapped_column(ForeignKey("operators.key"), primary_key=True)
    measurement_id: Mapped[int] = mapped_column(ForeignKey("measurements.id"))
    table: Mapped[LatencyTable] = relationship(back_populates="entries")
    measurement: Mapped[Measurement] = relationship()


class Calibration(Base):
    """A per-device correction fitted on whole networks measured end to end, kept beside the raw table it
    corrects: raw measurements stay raw, and a client chooses to apply it."""

    __tablename__ = "calibrations"
    __table_args__ = (UniqueConstraint("device_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    version: Mapped[int]
    table_id: Mapped[int] = mapped_column(ForeignKey("latency_tables.id"))
    space_hash: Mapped[str] = mapped_column(String(HASH_LEN), index=True)
    model: Mapped[dict[str, Any]]  # {"kind": "linear", "scale": a, "offset_us": b}
    metrics: Mapped[dict[str, Any]]  # MAPE before / after (leave-one-out), n networks, Kendall tau
    fitted_on: Mapped[list[Any]]  # [{"key", "predicted_us", "measured_us"}]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ValidationReport(Base):
    """What `dnas validate` found: networks of a table's space predicted by its rule and measured end to end,
    with the error figures, the noise ceiling and the drift. Kept so the team can see how far a table is
    trusted (a calibration is stored only with 20+ networks and when it beats the rule; most checks store
    none). `report` is the client's report as written to fidelity.json, with `rows` of predicted/measured."""

    __tablename__ = "validation_reports"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    table_id: Mapped[int] = mapped_column(ForeignKey("latency_tables.id"))
    report: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
