"""Profiling runs: expand a space into ops, reuse what the device already measured, queue the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from db.models import Device, Job, LatencyTable, Measurement, ProfilingRun, RunOperator
from profiler_service.errors import Conflict, Invalid, NotFound
from profiler_service.imports import refuse_if_imported
from profiler_service.networks import prepare_network, register_network
from profiler_service.operators import ensure_operators, insert_ignore
from profiler_service.schemas import RunCreate, RunPublic, SpaceRequest
from profiler_service.tables import publish_complete_runs
from profiler_service.timeutil import utcnow
from search.space.cost import op_cost
from search.space.enumerate import enumerate_ops
from search.space.export import ExportCache
from search.space.macro import SearchSpace, get_space
from search.space.opspec import OpSpecError
from search.tables.predict import anchor_archs, probe_specs


def resolve_space(data: dict[str, Any]) -> SearchSpace:
    """A full space (has 'stages') is taken as is; otherwise a named space with parameters."""
    try:
        if "stages" in data:
            return SearchSpace.from_dict(data)
        req = SpaceRequest.model_validate(data)
        kwargs: dict[str, Any] = {"resolution": req.resolution, "width": req.width, "num_classes": req.num_classes}
        if req.head_c is not None:
            kwargs["head_c"] = req.head_c
        if req.candidates is not None:
            kwargs["candidates"] = tuple(req.candidates)
        return get_space(req.name, **kwargs)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Invalid(f"space.{where}: {first['msg']}") from None
    except OpSpecError as exc:
        raise Invalid(f"space: {exc}") from None


# What one op may cost before the service refuses to export it: far above any phone-sized op, far below
# what would tie a worker up for minutes or exhaust its memory.
MAX_OP_MACS = 4_000_000_000
MAX_OP_ELEMENTS = 50_000_000


def check_budget(ops: dict) -> None:  # type: ignore[type-arg]
    for key, spec in ops.items():
        macs = op_cost(spec).macs
        elements = spec.batch * (spec.cin * spec.h * spec.w + spec.cin * spec.expansion * spec.h * spec.w)
        if macs > MAX_OP_MACS:
            raise Invalid(
                f"space: op {key} needs {macs / 1e9:.1f} G multiply-adds, above the {MAX_OP_MACS / 1e9:.0f} G limit"
            )
        if elements > MAX_OP_ELEMENTS:
            raise Invalid(
                f"space: op {key} has {elements / 1e6:.0f} M activations, above the {MAX_OP_ELEMENTS / 1e6:.0f} M limit"
            )


def create_run(
    session: Session, *, body: RunCreate, cache: ExportCache, artifact_dir: Path, max_attempts: int
) -> ProfilingRun:
    """Queue the space's ops, a call-overhead probe per input shape and the space's anchor networks as one
    batch group: an agent measures them together, so the table's prediction rule (search/tables/predict.py) is
    fitted on numbers taken in the same rounds as the ops it corrects.

    Exporting (seconds per op on a cold cache) happens with no transaction open: a few large runs must not
    hold the pool's connections while torch works, or agents and readers get 503s."""
    device = session.get(Device, body.device_id)
    if device is None:
        raise NotFound(f"device {body.device_id} does not exist")
    if device.retired_at is not None:
        raise Conflict(f"device {device.id} ({device.name}) is retired; register it again to profile it")
    refuse_if_imported(device, "be profiled")
    session.commit()  # end the read: no connection held while exporting
    space = resolve_space(body.space)
    ops = enumerate_ops(space).ops
    check_budget(ops)
    config, config_hash = body.config.model_dump(), body.config.hash

    probes = probe_specs(ops.values())
    specs = [*ops.values(), *probes.values()]
    for spec in specs:
        cache.get(spec)  # exports what is missing
    nets = [prepare_network(artifact_dir, space, arch) for arch in anchor_archs(space, body.anchors)]

    ensure_operators(session, cache, specs)
    anchors = [register_network(session, net).key for net in nets]
    keys = list(dict.fromkeys([*ops, *probes, *anchors]))
    run = ProfilingRun(
        device_id=device.id,
        space_hash=space.hash,
        space=space.to_dict(),
        config_hash=config_hash,
        config=config,
        total=len(keys),
    )
    run.operators = [RunOperator(op_key=k) for k in keys]
    session.add(run)
    session.flush()

    measured = set(
        session.scalars(
            select(Measurement.op_key).where(
                Measurement.device_id == device.id,
                Measurement.config_hash == config_hash,
                Measurement.op_key.in_(keys),
            )
        )
    )
    latest = {
        key: (generation, status)
        for key, generation, status in session.execute(
            select(Job.op_key, Job.generation, Job.status)
            .where(Job.device_id == device.id, Job.config_hash == config_hash, Job.op_key.in_(keys))
            .order_by(Job.generation)
        )
    }

    def job(key: str, generation: int) -> dict[str, Any]:
        return {"device_id": device.id, "op_key": key, "config_hash": config_hash, "config": config,
                "generation": generation, "max_attempts": max_attempts, "batch_group": f"run:{run.id}"}  # fmt: skip

    new_jobs = []
    for key in keys:
        if key in measured:
            continue
        generation, status = latest.get(key, (-1, "failed"))
        if status in ("failed", "cancelled"):  # never tried, gave up or was cancelled: a new run tries afresh
            new_jobs.append(job(key, generation + 1))
    if any(j["op_key"] in ops for j in new_jobs):
        # Ops will be measured now: measure the probes and anchors again beside them, so the rule that corrects
        # these ops is fitted on numbers from the same rounds (earlier ones carry another session's drift).
        queued = {j["op_key"] for j in new_jobs}
        new_jobs += [job(k, latest.get(k, (-1, ""))[0] + 1) for k in [*probes, *anchors] if k not in queued]
    insert_ignore(session, Job, new_jobs)
    session.commit()
    publish_complete_runs(session, device_id=device.id, config_hash=config_hash)
    return run


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
        .where(Job.device_id == run.device_id, Job.config_hash == run.config_hash, Job.status == "failed", ~measured)
        .order_by(Job.op_key)
    ).all()
    return done or 0, [(key, err) for key, err in failed_rows]


def _public(session: Session, run: ProfilingRun) -> RunPublic:
    done, failed_rows = run_progress(session, run)
    version = session.scalar(select(LatencyTable.version).where(LatencyTable.run_id == run.id))
    return RunPublic(
        id=run.id,
        device_id=run.device_id,
        status=run.status,
        total=run.total,
        done=done,
        failed=len(failed_rows),
        space_hash=run.space_hash,
        config=run.config,
        config_hash=run.config_hash,
        table_version=version,
        created_at=run.created_at,
        finished_at=run.finished_at,
        reason=run.reason,
        errors=[f"{key}: {err}" for key, err in failed_rows[:10]],
    )


def run_status(session: Session, run_id: int) -> RunPublic:
    """The run as stored (its status is never computed on read), with its progress."""
    run = session.get(ProfilingRun, run_id, populate_existing=True)
    if run is None:
        raise NotFound(f"profiling run {run_id} does not exist")
    return _public(session, run)


RUN_STATUSES = ("running", "published", "failed", "cancelled")


def list_runs(
    session: Session, *, device_id: int | None, status: str | None, after: int, limit: int
) -> list[RunPublic]:
    query = select(ProfilingRun).where(ProfilingRun.id > after).order_by(ProfilingRun.id).limit(limit)
    if device_id is not None:
        query = query.where(ProfilingRun.device_id == device_id)
    if status is not None:
        query = query.where(ProfilingRun.status == status)
    return [_public(session, run) for run in session.scalars(query)]


def _cancel_jobs(session: Session, *, where, reason: str) -> int:  # type: ignore[no-untyped-def]
    """Queued and leased jobs matching `where` are cancelled: never leased again, and an agent holding one is
    told to stop (its heartbeat and result are answered 409)."""
    return session.execute(
        update(Job)
        .where(where, Job.status.in_(("queued", "leased")))
        .values(status="cancelled", finished_at=utcnow(), last_error=reason[:4000])
        .execution_options(synchronize_session=False)
    ).rowcount


def cancel_run(session: Session, run_id: int, reason: str = "cancelled by an admin") -> RunPublic:
    """Stop a running run: it will never publish. Its queued (and leased) jobs are cancelled, except those
    another running run of the same device and config is waiting for. Measurements already taken stay."""
    run = session.get(ProfilingRun, run_id, populate_existing=True)
    if run is None:
        raise NotFound(f"profiling run {run_id} does not exist")
    if run.status != "cancelled":
        flipped = session.execute(
            update(ProfilingRun)
            .where(ProfilingRun.id == run_id, ProfilingRun.status == "running")
            .values(status="cancelled", finished_at=utcnow(), reason=reason)
        ).rowcount
        if flipped != 1:
            session.rollback()
            run = session.get(ProfilingRun, run_id, populate_existing=True)
            assert run is not None
            raise Conflict(f"profiling run {run_id} is already {run.status}; only a running run can be cancelled")
        still_needed = (
            select(RunOperator.op_key)
            .join(ProfilingRun, ProfilingRun.id == RunOperator.run_id)
            .where(ProfilingRun.device_id == run.device_id, ProfilingRun.config_hash == run.config_hash,
                   ProfilingRun.status == "running", ProfilingRun.id != run_id)
        )  # fmt: skip
        _cancel_jobs(session, where=(Job.batch_group == f"run:{run_id}") & Job.op_key.not_in(still_needed),
                     reason=f"run {run_id} cancelled: {reason}")  # fmt: skip
        session.commit()
    return run_status(session, run_id)


def cancel_device_work(session: Session, device_id: int, reason: str) -> None:
    """A retired device measures nothing more: its running runs and all its unfinished jobs are cancelled."""
    session.execute(
        update(ProfilingRun)
        .where(ProfilingRun.device_id == device_id, ProfilingRun.status == "running")
        .values(status="cancelled", finished_at=utcnow(), reason=reason)
    )
    _cancel_jobs(session, where=Job.device_id == device_id, reason=reason)
