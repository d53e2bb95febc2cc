"""The agent protocol (device_agents/PROTOCOL.md): every agent, the iOS app included, speaks exactly this."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from db.models import Job, Operator
from profiler_service.api.deps import AgentDep, Id, SessionDep
from profiler_service.errors import NotFound
from profiler_service.networks import NETWORK_KEY, network_path
from profiler_service.operators import model_path
from profiler_service.queue import claim_next, heartbeat, record_failure, record_result
from profiler_service.schemas import Ack, FailureIn, Fingerprint, LeasedJob, LeaseProof, LeaseRequest, ResultIn
from profiler_service.tables import publish_complete_runs
from profiler_service.timeutil import as_utc
from search.opspec import OpSpec, OpSpecError

router = APIRouter(prefix="/agent", tags=["agent"])

POLL_INTERVAL_S = 0.25


@router.put("/fingerprint", status_code=204)
def report_fingerprint(body: Fingerprint, device: AgentDep, session: SessionDep) -> Response:
    """What the agent found the device to be (model, SoC, OS, runtime); stamped on every table it publishes."""
    device.fingerprint = body.model_dump()
    session.merge(device)
    session.commit()
    return Response(status_code=204)


def _leased(job: Job, op: Operator, request: Request) -> LeasedJob:
    settings = request.app.state.settings
    is_network = op.spec.get("kind") == "network"
    input_shape = op.spec["input_shape"] if is_network else list(OpSpec.from_dict(op.spec).input_shape)
    return LeasedJob(
        job_id=job.id,
        lease_token=job.lease_token or "",
        lease_expires_at=as_utc(job.lease_expires_at),
        lease_seconds=settings.lease_seconds,
        attempt=job.attempts,
        op_key=job.op_key,
        op_spec=op.spec,
        model_url=str(request.url_for("download_model", op_key=job.op_key)),
        model_sha256=op.onnx_sha256 or "",
        model_bytes=op.onnx_bytes or 0,
        input_shape=input_shape,
        config=job.config,
    )


@router.post("/lease", response_model=LeasedJob, responses={204: {"description": "No job within the wait."}})
async def lease(body: LeaseRequest, device: AgentDep, request: Request) -> LeasedJob | Response:
    """Long poll: answers with a job as soon as one is runnable for this device, or 204 after the wait."""
    state = request.app.state
    wait = min(body.wait_seconds, state.settings.long_poll_seconds)
    deadline = time.monotonic() + wait

    def attempt() -> LeasedJob | None:
        with state.sessionmaker() as session:
            job = claim_next(session, device_id=device.id, lease_seconds=state.settings.lease_seconds)
            if job is None:
                return None
            return _leased(job, session.get(Operator, job.op_key), request)

    while True:
        leased = await run_in_threadpool(attempt)
        if leased is not None:
            return leased
        if time.monotonic() >= deadline or await request.is_disconnected():
            return Response(status_code=204)
        await asyncio.sleep(POLL_INTERVAL_S)


@router.get("/models/{op_key}", name="download_model", response_class=FileResponse)
def download_model(op_key: str, device: AgentDep, session: SessionDep, request: Request) -> FileResponse:
    """The op's ONNX file. Keys are parsed, never used as paths, so no name can escape the artifact dir."""
    if NETWORK_KEY.fullmatch(op_key):
        if session.get(Operator, op_key) is None:
            raise NotFound(f"network {op_key} is not registered with this service")
        path = network_path(request.app.state.settings.artifact_dir, op_key)
        if not path.exists():
            raise NotFound(f"network {op_key}'s model file is missing from the artifact directory")
        return FileResponse(path, media_type="application/octet-stream", filename=f"{op_key}.onnx")
    try:
        spec = OpSpec.from_key(op_key)
    except OpSpecError:
        raise NotFound(f"{op_key!r} is not an op key") from None
    if session.get(Operator, spec.key) is None:
        raise NotFound(f"operator {op_key} is not registered with this service")
    path = model_path(request.app.state.cache, spec)
    return FileResponse(path, media_type="application/octet-stream", filename=f"{spec.key}.onnx")


@router.post("/jobs/{job_id}/heartbeat", response_model=Ack)
def job_heartbeat(job_id: Id, body: LeaseProof, device: AgentDep, session: SessionDep, request: Request) -> Ack:
    seconds = request.app.state.settings.lease_seconds
    job = heartbeat(session, device_id=device.id, job_id=job_id, lease_token=body.lease_token, lease_seconds=seconds)
    return Ack(job_id=job.id, status=job.status)


@router.post("/jobs/{job_id}/result", response_model=Ack)
def job_result(job_id: Id, body: ResultIn, device: AgentDep, session: SessionDep) -> Ack:
    """Store the statistics once; a replayed POST is answered 200 with `replayed: true`."""
    ack = record_result(session, device_id=device.id, job_id=job_id, body=body)
    job = session.get(Job, job_id)
    if job is not None:
        publish_complete_runs(session, device_id=device.id, config_hash=job.config_hash)
    return ack


@router.post("/jobs/{job_id}/failure", response_model=Ack)
def job_failure(job_id: Id, body: FailureIn, device: AgentDep, session: SessionDep) -> Ack:
    """Give the job back with a reason: requeued while attempts remain, failed after."""
    return record_failure(session, device_id=device.id, job_id=job_id, body=body)
