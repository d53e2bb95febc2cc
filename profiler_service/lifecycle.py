"""A profiling run's lifecycle: running -> published | failed | cancelled. Every change of a run's status is
written here, and each is stored when it happens (by the request that caused it, or by the sweep when the
worker that should have done it died), never computed on read, never changed after.

Every transition is one guarded statement, `UPDATE ... WHERE status = 'running'`: two workers (or a worker
and the sweep) racing to finish a run never both do, and a finished run cannot be finished again.
- published: every op measured and none of the run's own jobs pending; the flip commits together with the
  table (profiler_service/tables.py builds it), or not at all.
- failed: every op measured or failed, at least one failed: it can no longer complete.
- cancelled: by an admin, or because its device was retired; its jobs no other running run needs are
  cancelled with it (profiler_service/queue.py).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Job, LatencyTable, Measurement, ProfilingRun, RunOperator
from db.states import JOB_PENDING, JobStatus, RunStatus
from profiler_service.errors import Conflict, NotFound
from profiler_service.queue import cancel_jobs
from profiler_service.tables import build_table
from profiler_service.timeutil import utcnow

PUBLISH_ATTEMPTS = 5  # races lost for the device's next version number before leaving it to the sweep


def _finish(session: Session, where: ColumnElement[bool], status: RunStatus, reason: str | None = None) -> int:
    """The one transition: running runs matching `where` become `status`, in the caller's transaction.
    Returns how many this call changed (a run another worker finished first is not counted)."""
    values = {"status": status, "finished_at": utcnow()} | ({"reason": reason[:4000]} if reason else {})
    return session.execute(
        update(ProfilingRun).where(where, ProfilingRun.status == RunStatus.RUNNING).values(**values)
    ).rowcount


def run_progress(session: Session, run: ProfilingRun) -> tuple[int, list[tuple[str, str | None]]]:
    """How many of the run's ops are measured, and which failed (the newest job of the op gave up, and no
    measurement exists for it), with the reason."""
    keys = select(RunOperator.op_key).where(RunOperator.run_id == run.id).scalar_subquery()
    done = session.scalar(
        select(func.count(func.distinct(Measurement.op_key))).where(
            Measurement.device_id == run.device_id,
            Measurement.config_hash == run.config_hash,
            Measurement.op_key.in_(keys),
        )
    )
    newest = (
        select(Job.op_key, func.max(Job.generation).label("g"))
        .where(Job.device_id == run.device_id, Job.config_hash == run.config_hash, Job.op_key.in_(keys))
        .group_by(Job.op_key)
        .subquery()
    )
    measured = exists().where(
        Measurement.device_id == run.device_id,
        Measurement.config_hash == run.config_hash,
        Measurement.op_key == Job.op_key,
    )
    failed_rows = session.execute(
        select(Job.op_key, Job.last_error)
        .join(newest, (Job.op_key == newest.c.op_key) & (Job.generation == newest.c.g))
        .where(Job.device_id == run.device_id, Job.config_hash == run.config_hash, Job.status == JobStatus.FAILED,
               ~measured)
        .order_by(Job.op_key)
    ).all()  # fmt: skip
    return done or 0, [(key, err) for key, err in failed_rows]


# ---- published ------------------------------------------------------------------------------------------
def complete_runs(session: Session, *, device_id: int | None = None, config_hash: str | None = None) -> list[int]:
    """Running runs (of this device and config, or all of them: the sweep) whose every op has a measurement."""
    unmeasured = (
        select(RunOperator.op_key)
        .where(RunOperator.run_id == ProfilingRun.id)
        .where(
            ~exists().where(
                Measurement.device_id == ProfilingRun.device_id,
                Measurement.config_hash == ProfilingRun.config_hash,
                Measurement.op_key == RunOperator.op_key,
            )
        )
    )
    # Its own jobs still pending (probes and anchors measured again beside new ops) hold it back too.
    pending = exists().where(Job.run_id == ProfilingRun.id, Job.status.in_(JOB_PENDING))
    query = select(ProfilingRun.id).where(ProfilingRun.status == RunStatus.RUNNING, ~unmeasured.exists(), ~pending)
    if device_id is not None:
        query = query.where(ProfilingRun.device_id == device_id)
    if config_hash is not None:
        query = query.where(ProfilingRun.config_hash == config_hash)
    return list(session.scalars(query.order_by(ProfilingRun.id)))


def publish_run(session: Session, run_id: int) -> LatencyTable | None:
    """Publish a complete run as the device's next table version: the run's status flip and the table with all
    its entries and its payload commit together, or not at all. None if another worker published it, or if
    it lost the race for a version number PUBLISH_ATTEMPTS times (the sweep tries again)."""
    for _ in range(PUBLISH_ATTEMPTS):
        if _finish(session, ProfilingRun.id == run_id, RunStatus.PUBLISHED) != 1:
            session.rollback()
            return None  # another worker published it
        run = session.get(ProfilingRun, run_id, populate_existing=True)
        assert run is not None
        try:
            table = build_table(session, run)
        except IntegrityError:  # another run of this device took the version number: try the next one
            session.rollback()
            continue
        if table is None:
            session.rollback()
            return None
        session.commit()
        return table
    return None


def publish_complete_runs(session: Session, *, device_id: int, config_hash: str) -> list[LatencyTable]:
    published = []
    for run_id in complete_runs(session, device_id=device_id, config_hash=config_hash):
        table = publish_run(session, run_id)
        if table is not None:
            published.append(table)
    return published


# ---- failed ---------------------------------------------------------------------------------------------
def settle_failed_runs(session: Session, *, device_id: int | None = None) -> list[int]:
    """Store `failed` on running runs that can no longer complete: every op measured or failed, one failed.
    Read first; write only when one exists."""
    failed_job = exists().where(
        Job.device_id == ProfilingRun.device_id,
        Job.config_hash == ProfilingRun.config_hash,
        Job.op_key == RunOperator.op_key,
        Job.status == JobStatus.FAILED,
    )
    query = (
        select(ProfilingRun.id)
        .join(RunOperator, RunOperator.run_id == ProfilingRun.id)
        .where(ProfilingRun.status == RunStatus.RUNNING, failed_job)
        .distinct()
    )
    if device_id is not None:
        query = query.where(ProfilingRun.device_id == device_id)
    candidates = list(session.scalars(query))
    settled = []
    for run_id in candidates:
        run = session.get(ProfilingRun, run_id)
        if run is None:
            continue
        done, failed_rows = run_progress(session, run)
        if failed_rows and done + len(failed_rows) >= run.total:
            key, reason = failed_rows[0]
            why = f"{len(failed_rows)} of {run.total} jobs failed; first: {key}: {reason}"
            if _finish(session, ProfilingRun.id == run_id, RunStatus.FAILED, why):
                settled.append(run_id)
    if settled:
        session.commit()
    else:
        session.rollback()
    return settled


# ---- cancelled ------------------------------------------------------------------------------------------
def cancel_run(session: Session, run_id: int, reason: str = "cancelled by an admin") -> None:
    """Stop a running run: it will never publish. Its queued (and leased) jobs are cancelled, except those
    another running run of the same device and config is waiting for. Measurements already taken stay.
    Cancelling a cancelled run is a no-op; any other finished run is a Conflict."""
    run = session.get(ProfilingRun, run_id, populate_existing=True)
    if run is None:
        raise NotFound(f"profiling run {run_id} does not exist")
    if run.status == RunStatus.CANCELLED:
        return
    if _finish(session, ProfilingRun.id == run_id, RunStatus.CANCELLED, reason) != 1:
        session.rollback()
        run = session.get(ProfilingRun, run_id, populate_existing=True)
        assert run is not None
        raise Conflict(f"profiling run {run_id} is already {run.status}; only a running run can be cancelled")
    still_needed = (
        select(RunOperator.op_key)
        .join(ProfilingRun, ProfilingRun.id == RunOperator.run_id)
        .where(ProfilingRun.device_id == run.device_id, ProfilingRun.config_hash == run.config_hash,
               ProfilingRun.status == RunStatus.RUNNING, ProfilingRun.id != run_id)
    )  # fmt: skip
    cancel_jobs(session, where=(Job.run_id == run_id) & Job.op_key.not_in(still_needed),
                reason=f"run {run_id} cancelled: {reason}")  # fmt: skip
    session.commit()


def cancel_device_work(session: Session, device_id: int, reason: str) -> None:
    """A retired device measures nothing more: its running runs and all its unfinished jobs are cancelled, in
    the caller's transaction."""
    _finish(session, ProfilingRun.device_id == device_id, RunStatus.CANCELLED, reason)
    cancel_jobs(session, where=Job.device_id == device_id, reason=reason)
