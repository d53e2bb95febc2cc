"""Profiling runs: expand a space into ops, reuse what the device already measured, queue the rest; and read
them back. What happens to a run after that (published, failed, cancelled) is profiler_service/lifecycle.py's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Device, LatencyTable, Measurement, ProfilingRun, RunOperator
from db.states import JOB_UNMEASURED_END, RunStatus
from profiler_service.errors import Conflict, Invalid, NotFound
from profiler_service.imports import refuse_if_imported
from profiler_service.lifecycle import publish_complete_runs, run_progress
from profiler_service.networks import prepare_network, register_network
from profiler_service.operators import ensure_operators
from profiler_service.queue import add_jobs, latest_jobs, next_generation
from profiler_service.schemas import RunCreate, RunPublic, SpaceRequest
from search.space.cost import op_cost
from search.space.enumerate import enumerate_ops
from search.space.export import ExportCache
from search.space.macro import SearchSpace
from search.space.opspec import OpSpecError
from search.space.quantize import dtype_of
from search.tables.predict import anchor_archs, probe_specs


def resolve_space(data: dict[str, Any]) -> SearchSpace:
    """A full space (has 'stages') is taken as is; otherwise a named space with parameters."""
    try:
        if "stages" in data:
            return SearchSpace.from_dict(data)
        return SpaceRequest.model_validate(data).build()
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
    dtype = dtype_of(body.config.precision)  # int8: every op, probe and anchor quantized by one recipe
    ops = enumerate_ops(space, dtype).ops
    check_budget(ops)
    config, config_hash = body.config.model_dump(), body.config.hash

    probes = probe_specs(ops.values())
    specs = [*ops.values(), *probes.values()]
    for spec in specs:
        cache.get(spec)  # exports what is missing
    nets = [prepare_network(artifact_dir, space, arch, dtype) for arch in anchor_archs(space, body.anchors)]

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
    latest = latest_jobs(session, device_id=device.id, config_hash=config_hash, keys=keys)
    # Never tried, gave up or was cancelled: a new run tries afresh. Queued, leased or done: it is on its way.
    new_jobs = {
        key: next_generation(latest, key)
        for key in keys
        if key not in measured and (key not in latest or latest[key][1] in JOB_UNMEASURED_END)
    }
    if any(key in ops for key in new_jobs):
        # Ops will be measured now: measure the probes and anchors again beside them, so the rule that corrects
        # these ops is fitted on numbers from the same rounds (earlier ones carry another session's drift).
        new_jobs |= {k: next_generation(latest, k) for k in [*probes, *anchors] if k not in new_jobs}
    add_jobs(session, device_id=device.id, config=config, config_hash=config_hash, generations=new_jobs,
             max_attempts=max_attempts, run_id=run.id)  # fmt: skip
    session.commit()
    publish_complete_runs(session, device_id=device.id, config_hash=config_hash)
    return run


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


def list_runs(
    session: Session, *, device_id: int | None, status: RunStatus | None, after: int, limit: int
) -> list[RunPublic]:
    query = select(ProfilingRun).where(ProfilingRun.id > after).order_by(ProfilingRun.id).limit(limit)
    if device_id is not None:
        query = query.where(ProfilingRun.device_id == device_id)
    if status is not None:
        query = query.where(ProfilingRun.status == status)
    return [_public(session, run) for run in session.scalars(query)]
