"""The agent protocol (device_agents/PROTOCOL.md): every agent, the iOS app included, speaks exactly this."""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import timedelta

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from sqlalchemy import select, update
from starlette.concurrency import run_in_threadpool

from db.models import KEY_LEN, Device, Job, Operator
from db.states import JobStatus
from profiler_service.api.deps import AgentDep, Id, PollingAgentDep, SessionDep, agent_device
from profiler_service.api.strict_json import StrictJsonRoute, bulk_body
from profiler_service.errors import ApiError, NotFound
from profiler_service.lease_ops import LeaseOp
from profiler_service.lifecycle import publish_complete_runs, settle_failed_runs
from profiler_service.networks import NETWORK_KEY, network_path
from profiler_service.operators import model_path
from profiler_service.queue import (
    claim_batch,
    claim_next,
    heartbeat,
    heartbeat_batch,
    record_failure,
    record_result,
    record_results,
)
from profiler_service.schemas import (
    Ack,
    AgentStatusIn,
    BatchAck,
    BatchHeartbeat,
    BatchResultsIn,
    FailureIn,
    Fingerprint,
    LeasedBatch,
    LeasedJob,
    LeaseProof,
    LeaseRequest,
    ResultIn,
)
from profiler_service.timeutil import as_utc, utcnow
from profiler_service.wakeups import Wakeups
from search.space.opspec import OpSpec, OpSpecError

router = APIRouter(prefix="/agent", tags=["agent"], route_class=StrictJsonRoute)

log = logging.getLogger("dnas.service.agent")


@router.put("/fingerprint", status_code=204)
def report_fingerprint(body: Fingerprint, device: AgentDep, session: SessionDep) -> Response:
    """What the agent found the device to be (model, SoC, OS, runtime); stamped on every table it publishes."""
    device.fingerprint = body.model_dump()
    device.agent_problem = None  # the agent (re)started with its device: a problem it reported is over
    session.merge(device)
    session.commit()
    return Response(status_code=204)


@router.put("/status", status_code=204)
def report_status(body: AgentStatusIn, device: AgentDep, session: SessionDep) -> Response:
    """Why the agent cannot work now (its phone unplugged, a call refused), while it retries: a worker that
    keeps failing is otherwise only "not connected" on the dashboard. Its next fingerprint (a start that got as
    far as its device) clears it, as `problem: null` does."""
    now = utcnow()
    retry_at = None if body.retry_in_s is None else (now + timedelta(seconds=body.retry_in_s)).isoformat()
    problem = {"problem": body.problem, "reported_at": now.isoformat(), "retry_at": retry_at}
    session.execute(
        update(Device).where(Device.id == device.id).values(agent_problem=problem if body.problem else None)
    )
    session.commit()
    return Response(status_code=204)


def _leased(job: Job, op: LeaseOp, request: Request) -> LeasedJob:
    settings = request.app.state.settings
    return LeasedJob(
        job_id=job.id,
        lease_token=job.lease_token or "",
        lease_expires_at=as_utc(job.lease_expires_at),
        lease_seconds=settings.lease_seconds,
        attempt=job.attempts,
        op_key=job.op_key,
        op_spec=op.spec,
        # A path, resolved by the agent against the server it was configured with: never a URL built from
        # this request's Host header (behind a TLS proxy that would be an http:// URL the token is sent to).
        model_url=str(request.app.url_path_for("download_model", op_key=job.op_key)),
        model_sha256=op.sha256,
        model_bytes=op.bytes,
        input_shape=op.input_shape,
        config=job.config,
    )


def _batch(jobs: list[Job], group_jobs: int, session, request: Request) -> LeasedBatch:  # type: ignore[no-untyped-def]
    first = jobs[0]
    token = first.lease_token or ""
    # The batch's operators from the worker's memory, or one SELECT: loaded one by one they were a fifth of a
    # lease's time (py-spy), and read after every claim three of its round trips (profiler_service/lease_ops.py).
    ops = request.app.state.lease_ops.get(session, {job.op_key for job in jobs})
    return LeasedBatch(
        lease_token=token,
        lease_expires_at=as_utc(first.lease_expires_at),
        lease_seconds=request.app.state.settings.lease_seconds,
        batch_group=first.batch_group,
        seed=int(hashlib.sha256(token.encode()).hexdigest()[:8], 16),  # no part of the token leaks into results
        group_jobs=group_jobs,
        config=first.config,
        jobs=[_leased(job, ops.get(job.op_key), request) for job in jobs],
    )


@router.post(
    "/lease",
    response_model=LeasedJob | LeasedBatch,
    responses={204: {"description": "No job within the wait."}},
)
async def lease(body: LeaseRequest, agent: PollingAgentDep, request: Request) -> LeasedJob | LeasedBatch | Response:
    """Long poll: answers as soon as work is runnable for this device, or 204 after the wait. Without
    `max_jobs`, one job (protocol 1); with it, a batch of jobs of one group under one token (protocol 2).
    On PostgreSQL a waiting call is woken by the notification of the transaction that queued its work and
    queries nothing while it waits; on SQLite it claims every `lease_poll_seconds` (profiler_service/wakeups.py)."""
    state = request.app.state
    wakeups: Wakeups = state.wakeups
    wait = min(body.wait_seconds, state.settings.long_poll_seconds)
    deadline = time.monotonic() + wait

    checked = not agent.remembered  # looked up by this call, just now

    def attempt() -> LeasedJob | LeasedBatch | None:
        with state.sessionmaker() as session:
            if not checked:  # remembered, or woken after a wait: the token is checked before any claim
                agent_device(session, agent.digest)
            seconds = state.settings.lease_seconds
            if body.max_jobs is None:
                job = claim_next(session, device_id=agent.id, lease_seconds=seconds)
                if job is None:
                    return None
                return _leased(job, state.lease_ops.get(session, [job.op_key])[job.op_key], request)
            jobs, group_jobs = claim_batch(session, device_id=agent.id, lease_seconds=seconds, max_jobs=body.max_jobs)
            return _batch(jobs, group_jobs, session, request) if jobs else None

    if agent.agent_protocol != body.version:  # recorded once per change, not on every poll

        def record_protocol() -> None:
            with state.sessionmaker() as session:
                session.execute(update(Device).where(Device.id == agent.id).values(agent_protocol=body.version))
                session.commit()

        await run_in_threadpool(record_protocol)
        wakeups.protocol_recorded(agent.digest, body.version)

    while True:
        mark = wakeups.mark(agent.id)
        if not wakeups.known_idle(agent.id):
            try:
                leased = await run_in_threadpool(attempt)
            except ApiError:  # the remembered token was rotated or its device retired
                wakeups.forget(agent.digest)
                raise
            if leased is not None:
                return leased
            wakeups.note_idle(agent.id, mark)
            # Woken calls are few where notifications wake them: each checks its token again (it may have been
            # rotated while it waited). Polling calls (SQLite) check it once, as every call did before.
            checked = checked and not wakeups.live
        remaining = deadline - time.monotonic()
        if remaining <= 0 or await request.is_disconnected():
            return Response(status_code=204)
        await wakeups.wait(agent.id, mark, remaining)


MODEL_RESPONSES = {200: {"content": {"application/octet-stream": {}}}, 404: {"description": "No such model."}}


@router.get("/models/{op_key}", name="download_model", response_class=FileResponse, responses=MODEL_RESPONSES)
def download_model(op_key: str, device: AgentDep, session: SessionDep, request: Request) -> FileResponse:
    """The op's ONNX file. Keys are parsed, never used as paths, so no name can escape the artifact dir."""
    if len(op_key) > KEY_LEN:  # no op key is this long; parsing one would only cost (and int() has limits)
        raise NotFound(f"{op_key[:40]!r}... is not an op key (longer than {KEY_LEN} characters)")
    if NETWORK_KEY.fullmatch(op_key):
        if session.get(Operator, op_key) is None:
            raise NotFound(f"network {op_key} is not registered with this service")
        path = network_path(request.app.state.settings.artifact_dir, op_key)
        if not path.exists():
            raise NotFound(f"network {op_key}'s model file is missing from the artifact directory")
        return FileResponse(path, media_type="application/octet-stream", filename=f"{op_key}.onnx")
    try:
        spec = OpSpec.from_key(op_key)
    except (OpSpecError, ValueError):
        raise NotFound(f"{op_key!r} is not an op key") from None
    if session.get(Operator, spec.key) is None:
        raise NotFound(f"operator {op_key} is not registered with this service")
    session.rollback()  # no connection held if the file must be exported again
    path = model_path(request.app.state.cache, spec)
    return FileResponse(path, media_type="application/octet-stream", filename=f"{spec.key}.onnx")


@router.post("/jobs/{job_id}/heartbeat", response_model=Ack)
def job_heartbeat(job_id: Id, body: LeaseProof, device: AgentDep, session: SessionDep, request: Request) -> Ack:
    seconds = request.app.state.settings.lease_seconds
    job = heartbeat(session, device_id=device.id, job_id=job_id, lease_token=body.lease_token, lease_seconds=seconds)
    return Ack(job_id=job.id, status=job.status)


@router.post("/heartbeat", response_model=BatchHeartbeat)
def batch_heartbeat(body: LeaseProof, device: AgentDep, session: SessionDep, request: Request) -> BatchHeartbeat:
    """Extend every job held under this lease token (a whole batch with one call)."""
    seconds = request.app.state.settings.lease_seconds
    n, expires = heartbeat_batch(session, device_id=device.id, lease_token=body.lease_token, lease_seconds=seconds)
    return BatchHeartbeat(extended=n, lease_expires_at=expires)


@router.post("/results", response_model=BatchAck)
@bulk_body
def batch_results(body: BatchResultsIn, device: AgentDep, session: SessionDep) -> BatchAck:
    """A batch's results in one call; each is acknowledged on its own (done, replayed, conflict, not_found)."""
    acks = record_results(session, device_id=device.id, body=body)
    done = [a.job_id for a in acks if a.status == JobStatus.DONE]
    # One SELECT for the configs the stored results complete: loading each job again was one query per item (the
    # session's identity map holds jobs only while something references them), 15% of an agent call (py-spy).
    configs = set(session.scalars(select(Job.config_hash).where(Job.id.in_(done)).distinct())) if done else set()
    for config_hash in sorted(configs):
        _publish_now(session, device.id, config_hash)
    return BatchAck(acks=acks)


def _publish_now(session, device_id: int, config_hash: str) -> None:  # type: ignore[no-untyped-def]
    """Publish what the results just completed. The results are committed already, so a failure here must
    not turn their acknowledgement into an error: the sweep publishes it instead."""
    try:
        publish_complete_runs(session, device_id=device_id, config_hash=config_hash)
    except Exception as exc:  # the sweep (profiler_service/sweep.py) is the safety net
        session.rollback()
        log.warning("publishing after results failed (the sweep will retry): %s", exc)


@router.post("/jobs/{job_id}/result", response_model=Ack)
@bulk_body
def job_result(job_id: Id, body: ResultIn, device: AgentDep, session: SessionDep) -> Ack:
    """Store the statistics once; a replayed POST is answered 200 with `replayed: true`."""
    ack = record_result(session, device_id=device.id, job_id=job_id, body=body)
    job = session.get(Job, job_id)
    if job is not None:
        _publish_now(session, device.id, job.config_hash)
    return ack


@router.post("/jobs/{job_id}/failure", response_model=Ack)
def job_failure(job_id: Id, body: FailureIn, device: AgentDep, session: SessionDep) -> Ack:
    """Give the job back with a reason: requeued while attempts remain, failed after."""
    ack = record_failure(session, device_id=device.id, job_id=job_id, body=body)
    if ack.status == JobStatus.FAILED:  # its run may now be unable to finish: store that now, not at the next sweep
        settle_failed_runs(session, device_id=device.id)
    return ack
