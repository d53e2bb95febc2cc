"""The measurement job queue on SQL: claim, heartbeat, result, failure.

Every claim hands out a fresh lease token; heartbeat, result and failure must present it, so an agent whose
lease expired (and whose job went to another agent) can never overwrite newer work. Expired leases are taken
back inside the normal claim. A claim that finds nothing writes nothing: an idle agent's long poll is reads
only (the sweep, profiler_service/sweep.py, fails leases that expired on their last attempt).

An expired lease's token keeps working until the job is taken by another claim, failed by the sweep, or
cancelled: a late heartbeat extends it again, a late result is stored. After that, every call with it is
409 (a replay of a result already stored is still answered 200, `replayed`).

Every statement that writes a job is here: adding jobs (for a run, a network set, one network), claiming,
heartbeats, results and failures, failing leases that expired on their last attempt, cancelling. The states
are db/states.py's; what a run does with its jobs' outcomes is profiler_service/lifecycle.py's.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    ScalarSelect,
    String,
    and_,
    exists,
    func,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from db.models import PENDING_STATUSES, Job, Measurement
from db.states import JOB_PENDING, JobStatus
from profiler_service import notify
from profiler_service.errors import Conflict, Invalid, NotFound
from profiler_service.operators import insert_ignore
from profiler_service.schemas import Ack, BatchResultsIn, FailureIn, ResultIn, ResultStats
from profiler_service.security import same
from profiler_service.timeutil import utcnow
from search.space.quantize import dtype_of

EXHAUSTED = "lease expired on the last attempt (agent lost?)"


# ---- adding jobs ------------------------------------------------------------------------------------------
def _run_group(run_id: int) -> str:
    return f"run:{run_id}"


def set_group(set_id: str) -> str:
    """The batch group of a set of networks measured together (`dnas validate`)."""
    return f"net:{set_id}"


def latest_jobs(
    session: Session, *, device_id: int, config_hash: str, keys: Iterable[str]
) -> dict[str, tuple[int, str]]:
    """Each key's newest job on this device under this config: (generation, status). Keys never queued are
    absent."""
    rows = session.execute(
        select(Job.op_key, Job.generation, Job.status)
        .where(Job.device_id == device_id, Job.config_hash == config_hash, Job.op_key.in_(list(keys)))
        .order_by(Job.generation)
    )
    return {key: (generation, status) for key, generation, status in rows}


def next_generation(latest: Mapping[str, tuple[int, str]], key: str) -> int:
    """The generation a new job of `key` gets: one past its newest, 0 if it was never queued."""
    return latest[key][0] + 1 if key in latest else 0


def add_jobs(
    session: Session,
    *,
    device_id: int,
    config: dict[str, Any],
    config_hash: str,
    generations: Mapping[str, int],
    max_attempts: int,
    run_id: int | None = None,
    group: str | None = None,
) -> None:
    """Queue one job per op key at the given generation, in the caller's transaction. A run's jobs form its
    batch group (an agent measures them in the same rounds); otherwise `group` names one (a network set) or
    there is none (a single network). A job that exists already (a concurrent request queued the same
    generation) is left as it is. On PostgreSQL the same transaction notifies the device's waiting long polls."""
    if run_id is not None:
        group = _run_group(run_id)
    rows = [{"device_id": device_id, "op_key": key, "config_hash": config_hash, "config": config,
             "generation": generation, "max_attempts": max_attempts, "batch_group": group, "run_id": run_id}
            for key, generation in generations.items()]  # fmt: skip
    insert_ignore(session, Job, rows)
    if rows:
        notify.jobs_runnable(session, device_id)


# ---- claiming -------------------------------------------------------------------------------------------
def _runnable(now: datetime) -> ColumnElement[bool]:
    """A job a claim may take: queued, or leased with the lease expired, with attempts left."""
    return and_(
        Job.attempts < Job.max_attempts,
        or_(Job.status == JobStatus.QUEUED, and_(Job.status == JobStatus.LEASED, Job.lease_expires_at < now)),
    )


def _claimable(device_id: int, now: datetime) -> ColumnElement[bool]:
    return and_(Job.device_id == device_id, _runnable(now))


def has_runnable_job(device_id: ColumnElement[int], now: datetime) -> ColumnElement[bool]:
    """Whether the device has a job a claim would take now, as a column of a query over devices: how each
    worker's recheck (profiler_service/wakeups.py) finds, for every device at once, what no notification
    announced (a lease that expired, a job written by hand)."""
    return exists().where(Job.device_id == device_id, _runnable(now))


def claim_next(session: Session, *, device_id: int, lease_seconds: float) -> Job | None:
    """Lease the oldest runnable job of one device, or return None (protocol 1): a batch of one, so both
    protocols share one claim and its race handling. Safe with many workers and agents."""
    jobs, _ = claim_batch(session, device_id=device_id, lease_seconds=lease_seconds, max_jobs=1, count_group=False)
    return jobs[0] if jobs else None


def pending() -> ColumnElement[bool]:
    """The partial indexes' predicate (db/models.py PENDING_WHERE), its literals written into the SQL: SQLite
    uses a partial index only for a query carrying the same term, and PostgreSQL's generic plan of a statement
    psycopg prepared (from its sixth execution on) cannot prove the predicate from bound parameters."""
    return Job.status.in_([literal(s, String, literal_execute=True) for s in PENDING_STATUSES])


def claim_batch(
    session: Session, *, device_id: int, lease_seconds: float, max_jobs: int, count_group: bool = True
) -> tuple[list[Job], int]:
    """Lease up to `max_jobs` runnable jobs of one group (the oldest runnable job's run or network set) and
    one config, under one token: an agent measures them together, in the same interleaved rounds. Also returns
    how many jobs of the group were runnable, so a split group is visible to the agent; protocol 1 has no
    use for that count and skips it (`count_group=False`).

    One UPDATE ... RETURNING (`_claim_statement`) finds, locks, leases and returns the jobs, so a claim is one
    round trip and one commit (it was five statements, the last reading the jobs back by their token, which
    no index serves); the partial indexes over pending jobs (migration 0009) serve it.
    On PostgreSQL the oldest job is looked for past the rows concurrent claims hold (SKIP LOCKED): their group
    is theirs, the next one is this claim's. Read without the lock, every concurrent claim of a device aimed at
    the same group and answered "nothing" with 50,000 jobs queued (bench.load: 1,136 of 1,290 leases empty at
    64 connections), and a claim that finds nothing lets its worker record the device idle
    (profiler_service/wakeups.py), so its next calls were empty too. On SQLite the statement is one write
    transaction, which the database runs alone; a claim there reads first, so an idle poll never takes the
    write lock."""
    now = utcnow()
    claimable = and_(_claimable(device_id, now), pending())
    postgres = session.get_bind().dialect.name == "postgresql"
    if not postgres and session.scalar(select(Job.id).where(claimable).limit(1)) is None:
        session.rollback()
        return [], 0
    token = secrets.token_hex(24)
    ids, group_count = _claim_statement(device_id, now, max_jobs)
    leased = (
        update(Job)
        .where(Job.id.in_(ids))
        .values(
            status=JobStatus.LEASED,
            lease_token=token,
            attempts=Job.attempts + 1,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
        )
        # PostgreSQL counts over the statement's snapshot, before its own changes; SQLite would count while
        # it updates, so it counts apart, below.
        .returning(Job, group_count if postgres and count_group else literal(0))
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    rows = session.execute(leased).all()
    if not rows:
        session.rollback()
        return [], 0
    won = sorted((job for job, _ in rows), key=lambda job: job.id)
    group_jobs = rows[0][1]
    if not postgres and count_group and won[0].batch_group is not None:  # the group's runnable jobs left, + these
        left = and_(claimable, Job.config_hash == won[0].config_hash, Job.batch_group == won[0].batch_group)
        group_jobs = session.scalar(select(func.count()).select_from(Job).where(left)) + len(won)
    session.commit()
    return won, max(group_jobs, len(won))


def _claim_statement(device_id: int, now: datetime, max_jobs: int) -> tuple[CompoundSelect, ScalarSelect]:
    """The ids a claim leases, and the count of its group's runnable jobs, in SQL over two CTEs, each one scan
    run once (MATERIALIZED):
    - `first`: the oldest runnable job not held by a concurrent claim, locked, read from ix_jobs_pending;
    - `picked`: its group's oldest runnable jobs of its config not held by another claim, locked. `first` is
      among them unless another claim gave rows back between the two scans: older ones are taken then, and
      `first` stays unleased.
    A job of no group (a single network) is a batch of its own: `picked` finds nothing, and `first` is taken.

    `first` names its device by a range and orders by (device_id, id), which only ix_jobs_pending gives. With
    `device_id = d` PostgreSQL takes the device as a constant, the primary key then gives `ORDER BY id` too,
    and on fresh statistics it chose that: a walk past every done job before the first pending one (2.6 ms
    with 20,000 done, per claim; EXPLAIN in docs/benchmarks.md)."""
    claimable = and_(_claimable(device_id, now), pending())
    first = (
        select(Job.id, Job.batch_group, Job.config_hash)
        .where(Job.device_id.between(device_id, device_id), _runnable(now), pending())
        .order_by(Job.device_id, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .cte("first")
        .prefix_with("MATERIALIZED")
    )
    in_group = and_(
        claimable,
        Job.config_hash == select(first.c.config_hash).scalar_subquery(),
        Job.batch_group == select(first.c.batch_group).scalar_subquery(),
    )
    picked = (
        select(Job.id)
        .where(in_group)
        .order_by(Job.id)
        .limit(max_jobs)
        .with_for_update(skip_locked=True)
        .cte("picked")
        .prefix_with("MATERIALIZED")
    )
    ids = union_all(select(picked.c.id), select(first.c.id).where(first.c.batch_group.is_(None)))
    # Over the jobs as the statement began, not the row being updated: never correlated to it.
    group_count = select(func.count()).select_from(Job).where(in_group).correlate(None).scalar_subquery()
    return ids, group_count


def _job_of(session: Session, device_id: int, job_id: int) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.device_id != device_id:
        raise NotFound(f"job {job_id} does not exist for this device")
    return job


def heartbeat(session: Session, *, device_id: int, job_id: int, lease_token: str, lease_seconds: float) -> Job:
    _job_of(session, device_id, job_id)
    now = utcnow()
    extended = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.LEASED, Job.lease_token == lease_token)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now)
    ).rowcount
    session.commit()
    if extended != 1:
        raise Conflict(f"job {job_id}: this lease is no longer valid (expired and re-leased, or finished); stop work")
    return _job_of(session, device_id, job_id)


def heartbeat_batch(
    session: Session, *, device_id: int, lease_token: str, lease_seconds: float
) -> tuple[int, datetime]:
    """Extend every job still held under this token (a batch, or a single job)."""
    now = utcnow()
    expires = now + timedelta(seconds=lease_seconds)
    extended = session.execute(
        update(Job)
        .where(Job.device_id == device_id, Job.status == JobStatus.LEASED, Job.lease_token == lease_token)
        .values(lease_expires_at=expires, heartbeat_at=now)
    ).rowcount
    session.commit()
    if not extended:
        raise Conflict("no job is held under this lease token any more (expired and re-leased, or finished); stop work")
    return extended, expires


def _replay_or_conflict(session: Session, job: Job, lease_token: str) -> Ack:
    if job.status == JobStatus.DONE and job.lease_token and same(job.lease_token, lease_token):
        m_id = session.scalar(select(Measurement.id).where(Measurement.job_id == job.id))
        return Ack(job_id=job.id, status=JobStatus.DONE, replayed=True, measurement_id=m_id)
    if job.status == JobStatus.CANCELLED:
        raise Conflict(f"job {job.id} was cancelled ({job.last_error}); discard this result")
    raise Conflict(
        f"job {job.id}: the lease token is stale (job is {job.status} under another lease); discard this result"
    )


def _store_result(session: Session, *, device_id: int, job_id: int, lease_token: str, body: ResultStats) -> Ack:
    """Write one measurement in the caller's transaction, once. A replay gets the same answer, writes nothing."""
    job = _job_of(session, device_id, job_id)
    if not _held(job, lease_token):
        return _replay_or_conflict(session, job, lease_token)
    _check_result(job, body)
    now = utcnow()
    finished = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.LEASED, Job.lease_token == lease_token)
        .values(status=JobStatus.DONE, finished_at=now, lease_expires_at=None)
    ).rowcount
    if finished != 1:  # a concurrent replay got there first
        raise Conflict(f"job {job_id}: finished concurrently by a replay of this result")
    measurement = _measurement(job, device_id, body, now)
    session.add(measurement)
    session.flush()
    return Ack(job_id=job.id, status=JobStatus.DONE, measurement_id=measurement.id)


def _held(job: Job, lease_token: str) -> bool:
    return job.status == JobStatus.LEASED and bool(job.lease_token) and same(job.lease_token or "", lease_token)


def _check_result(job: Job, body: ResultStats) -> None:
    """Raise Invalid when the result does not fit its job's config (precision, rounds); nothing is written."""
    precision = job.config.get("precision", "fp32")
    if not job.op_key.startswith("net-") and job.op_key.rsplit("-", 1)[-1] != dtype_of(precision):
        raise Invalid(f"job {job.id}: {job.op_key} is not a {precision} model; not stored")
    claimed = (body.context or {}).get("precision")
    if claimed is not None and claimed != precision:
        raise Invalid(f"job {job.id}: measured as {claimed!r}, but its config asks for {precision!r}; not stored")
    if body.rounds is not None and body.rounds != job.config.get("rounds"):
        raise Invalid(
            f"job {job.id}: measured in {body.rounds} rounds, but its config asks for {job.config.get('rounds')}"
        )


def _measurement(job: Job, device_id: int, body: ResultStats, now: datetime) -> Measurement:
    return Measurement(
        job_id=job.id,
        attempt=job.attempts,
        device_id=device_id,
        op_key=job.op_key,
        config_hash=job.config_hash,
        median_us=body.median_us,
        mean_us=body.mean_us,
        p10_us=body.p10_us,
        p90_us=body.p90_us,
        std_us=body.std_us,
        n=body.n,
        samples_us=body.samples_us,
        rounds=body.rounds,
        round_medians_us=body.round_medians_us,
        estimator=body.estimator,
        context=body.context,
        created_at=now,
    )


def record_result(session: Session, *, device_id: int, job_id: int, body: ResultIn) -> Ack:
    """Store one measurement, once. A replay of the same POST gets the same answer and writes nothing."""
    try:
        ack = _store_result(session, device_id=device_id, job_id=job_id, lease_token=body.lease_token, body=body)
    except Conflict:
        session.rollback()
        return _replay_or_conflict(session, _job_of(session, device_id, job_id), body.lease_token)
    session.commit()
    return ack


def _record_batch_at_once(session: Session, *, device_id: int, body: BatchResultsIn) -> list[Ack] | None:
    """The common case in three statements instead of three per item: every item a distinct job of this device,
    held under the token, fitting its config. Loads the jobs in one SELECT, finishes them in one UPDATE and
    stores the measurements in one INSERT (py-spy: results were a third of the agent protocol's time, in round
    trips). None, having written nothing, when any item is not that case (or a concurrent replay finished
    one): the per-item path then answers each item on its own."""
    ids = [item.job_id for item in body.results]
    if len(set(ids)) != len(ids):
        return None
    token = body.lease_token
    jobs = {job.id: job for job in session.scalars(
        select(Job).where(Job.id.in_(ids)).execution_options(populate_existing=True))}  # fmt: skip
    for item in body.results:
        job = jobs.get(item.job_id)
        if job is None or job.device_id != device_id or not _held(job, token):
            return None
        try:
            _check_result(job, item)
        except Invalid:
            return None
    now = utcnow()
    finished = session.execute(
        update(Job)
        .where(Job.id.in_(ids), Job.status == JobStatus.LEASED, Job.lease_token == token)
        .values(status=JobStatus.DONE, finished_at=now, lease_expires_at=None)
    ).rowcount
    if finished != len(ids):  # a concurrent replay got to some first: answer each on its own
        session.rollback()
        return None
    measurements = [_measurement(jobs[item.job_id], device_id, item, now) for item in body.results]
    session.add_all(measurements)
    session.flush()  # one multi-row INSERT ... RETURNING (SQLAlchemy's insertmanyvalues)
    return [Ack(job_id=m.job_id, status=JobStatus.DONE, measurement_id=m.id) for m in measurements]


def record_results(session: Session, *, device_id: int, body: BatchResultsIn) -> list[Ack]:
    """A batch's results in one transaction. Each item is answered on its own: stored, replayed, or refused
    (a stale token or another device's job), so one bad item never costs the others."""
    at_once = _record_batch_at_once(session, device_id=device_id, body=body)
    if at_once is not None:
        session.commit()
        return at_once
    acks = []
    token = body.lease_token
    for item in body.results:
        try:  # every refusal below happens before that item wrote anything
            acks.append(_store_result(session, device_id=device_id, job_id=item.job_id, lease_token=token, body=item))
        except Conflict:  # a concurrent replay stored it first, or the token is stale: say which
            try:
                acks.append(_replay_or_conflict(session, _job_of(session, device_id, item.job_id), token))
            except Conflict as exc:
                acks.append(Ack(job_id=item.job_id, status="conflict", detail=str(exc.detail)))
        except Invalid as exc:
            acks.append(Ack(job_id=item.job_id, status="invalid", detail=str(exc.detail)))
        except NotFound as exc:
            acks.append(Ack(job_id=item.job_id, status="not_found", detail=str(exc.detail)))
    session.commit()
    return acks


def record_failure(session: Session, *, device_id: int, job_id: int, body: FailureIn) -> Ack:
    """Requeue while attempts remain; after that the job is failed with the agent's reason. A give-back (the
    job was not tried) always requeues and returns the attempt."""
    job = _job_of(session, device_id, job_id)
    if job.status != JobStatus.LEASED or not job.lease_token or not same(job.lease_token, body.lease_token):
        session.rollback()
        raise Conflict(f"job {job_id}: the lease token is stale (job is {job.status}); nothing recorded")
    exhausted = job.attempts >= job.max_attempts and not body.give_back
    status = JobStatus.FAILED if exhausted else JobStatus.QUEUED
    # a give-back hands the attempt its lease took back: the job was never tried on the device
    attempts = max(job.attempts - 1, 0) if body.give_back else job.attempts
    changed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.LEASED, Job.lease_token == body.lease_token)
        .values(
            status=status,
            attempts=attempts,
            last_error=body.reason,
            lease_token=None,
            lease_expires_at=None,
            finished_at=utcnow() if exhausted else None,
        )
    ).rowcount
    if changed == 1 and not exhausted:  # given back: another agent of this device may take it now
        notify.jobs_runnable(session, device_id)
    session.commit()
    if changed != 1:
        raise Conflict(f"job {job_id}: the lease changed while reporting the failure; nothing recorded")
    return Ack(job_id=job_id, status=status)


# ---- ending jobs no agent will finish ---------------------------------------------------------------------
def fail_exhausted_leases(session: Session) -> int:
    """A lease that expired on its last attempt ends the job (the device keeps dying on it): the sweep's
    first step. Read first; write only when one exists (an idle service makes no writes)."""
    now = utcnow()
    dead = and_(Job.status == JobStatus.LEASED, Job.lease_expires_at < now, Job.attempts >= Job.max_attempts)
    ids = list(session.scalars(select(Job.id).where(dead).limit(1000)))
    if not ids:
        session.rollback()
        return 0
    n = session.execute(
        update(Job).where(Job.id.in_(ids), dead).values(status=JobStatus.FAILED, finished_at=now, last_error=EXHAUSTED)
    ).rowcount
    session.commit()
    return n


def cancel_jobs(session: Session, *, where: ColumnElement[bool], reason: str) -> int:
    """Queued and leased jobs matching `where` are cancelled, in the caller's transaction: never leased again,
    and an agent holding one is told to stop (its heartbeat and result are answered 409)."""
    return session.execute(
        update(Job)
        .where(where, Job.status.in_(JOB_PENDING))
        .values(status=JobStatus.CANCELLED, finished_at=utcnow(), last_error=reason[:4000])
        .execution_options(synchronize_session=False)
    ).rowcount
