"""Whole networks measured end to end on a device, through the same jobs and agents as operators.

A network is registered as an operator of kind `network` with a key derived from its space and
architecture; its measurement is what the table's sum of operators is checked against (`dnas validate`).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Device, Job, Measurement, Operator
from db.states import JOB_FINAL, JobStatus
from profiler_service.errors import Conflict, Invalid, NotFound
from profiler_service.imports import refuse_if_imported
from profiler_service.operators import insert_ignore
from profiler_service.queue import add_jobs, latest_jobs, next_generation, set_group
from profiler_service.schemas import MeasureConfig
from search.space.export import atomic_write, export_network, sha256_file
from search.space.macro import SearchSpace
from search.space.opspec import OpSpecError
from search.space.quantize import dtype_of

NETWORK_KEY = re.compile(r"net-[0-9a-f]{24}")


def network_key(space: SearchSpace, arch: list[str], dtype: str = "float32") -> str:
    return space.network_key(arch, dtype)


def network_path(artifact_dir: Path, key: str) -> Path:
    if not NETWORK_KEY.fullmatch(key):
        raise NotFound(f"{key!r} is not a network key")
    return artifact_dir / "networks" / f"{key}.onnx"


@dataclass(frozen=True)
class PreparedNetwork:
    key: str
    arch: list[str]
    space: SearchSpace
    path: Path
    dtype: str = "float32"


def prepare_network(artifact_dir: Path, space: SearchSpace, arch: list[str], dtype: str = "float32") -> PreparedNetwork:
    """Export the architecture's ONNX file if it is missing. No database here: exporting takes seconds, and
    must never run while a transaction holds one of the pool's connections. At int8 the network is quantized
    by the recipe every op of its table was (search/space/quantize.py), under its own key."""
    try:
        names = list(space.check_arch(arch))
    except OpSpecError as exc:
        raise Invalid(f"arch: {exc}") from None
    key = network_key(space, names, dtype)
    path = network_path(artifact_dir, key)
    if not path.exists():
        import torch  # here, not with the module: a service whose networks are exported needs no torch

        from search.space.model import build_model

        state = torch.random.get_rng_state()
        torch.manual_seed(0)  # weights do not change latency; fixing them makes the file reproducible
        model = build_model(space, names)
        torch.random.set_rng_state(state)
        shape = (space.batch, space.in_channels, space.resolution, space.resolution)
        atomic_write(path, export_network(model, shape, dtype=dtype, key=key))
    return PreparedNetwork(key=key, arch=names, space=space, path=path, dtype=dtype)


def spec_dtype(spec: dict[str, Any]) -> str:
    """The dtype an operator row's model runs at: ops and probes carry it, fp32 networks predate it."""
    return str(spec.get("dtype", "float32"))


def check_precision(key: str, spec: dict[str, Any], precision: str) -> None:
    """A model is measured only under the precision it was exported at: nothing is stored under the wrong one."""
    if spec_dtype(spec) != dtype_of(precision):
        raise Invalid(f"{key} is a {spec_dtype(spec)} model; it cannot be measured under precision {precision}")


def register_network(session: Session, net: PreparedNetwork) -> Operator:
    op = session.get(Operator, net.key)
    if op is None:
        space = net.space
        spec = {"kind": "network", "arch": net.arch, "space": space.to_dict(),
                "input_shape": [space.batch, space.in_channels, space.resolution, space.resolution]}  # fmt: skip
        if net.dtype != "float32":  # an fp32 network's spec is what it always was
            spec["dtype"] = net.dtype
        insert_ignore(session, Operator, [{"key": net.key, "spec": spec, "onnx_sha256": sha256_file(net.path),
                                            "onnx_bytes": net.path.stat().st_size}])  # fmt: skip
        session.commit()
        op = session.get(Operator, net.key)
    assert op is not None
    return op


def request_measurement(session: Session, *, device: Device, op: Operator, config: MeasureConfig,
                        max_attempts: int) -> dict[str, Any]:  # fmt: skip
    """Queue the network on the device unless it was measured (or is queued) under this config already."""
    check_precision(op.key, op.spec, config.precision)
    if device.retired_at is not None:
        raise Conflict(f"device {device.id} ({device.name}) is retired")
    refuse_if_imported(device, "measure networks")
    latest = latest_jobs(session, device_id=device.id, config_hash=config.hash, keys=[op.key])
    if op.key not in latest or latest[op.key][1] == JobStatus.FAILED:
        add_jobs(session, device_id=device.id, config=config.model_dump(), config_hash=config.hash,
                 generations={op.key: next_generation(latest, op.key)}, max_attempts=max_attempts)  # fmt: skip
        session.commit()
    return network_status(session, device_id=device.id, key=op.key, config_hash=config.hash)


def request_set(session: Session, *, device: Device, ops: list[Operator], config: MeasureConfig,
                max_attempts: int) -> str:  # fmt: skip
    """Queue several networks as one batch group, so an agent measures them together in interleaved rounds
    (and the noise ceiling, even rounds against odd, compares like with like). Networks measured before get a
    fresh job: a check wants numbers from now, taken next to each other."""
    for op in ops:
        check_precision(op.key, op.spec, config.precision)
    if device.retired_at is not None:
        raise Conflict(f"device {device.id} ({device.name}) is retired")
    refuse_if_imported(device, "measure networks")
    set_id = secrets.token_hex(8)
    keys = list(dict.fromkeys(op.key for op in ops))
    latest = latest_jobs(session, device_id=device.id, config_hash=config.hash, keys=keys)
    add_jobs(session, device_id=device.id, config=config.model_dump(), config_hash=config.hash,
             generations={key: next_generation(latest, key) for key in keys}, max_attempts=max_attempts,
             group=set_group(set_id))  # fmt: skip
    session.commit()
    return set_id


def set_status(session: Session, *, device_id: int, set_id: str) -> dict[str, Any]:
    jobs = list(
        session.scalars(
            select(Job).where(Job.device_id == device_id, Job.batch_group == set_group(set_id)).order_by(Job.id)
        )
    )
    if not jobs:
        raise NotFound(f"device {device_id} has no network set {set_id}")
    by_job = {
        m.job_id: m for m in session.scalars(select(Measurement).where(Measurement.job_id.in_([j.id for j in jobs])))
    }
    networks = []
    for job in jobs:
        m = by_job.get(job.id)
        row: dict[str, Any] = {"key": job.op_key, "job_id": job.id, "status": JobStatus.DONE if m else job.status,
                               "error": job.last_error}  # fmt: skip
        if m is not None:
            row["measurement"] = _measurement(m)
        networks.append(row)
    states = {n["status"] for n in networks}
    # A set ends when every network is measured, failed or cancelled (its device retired): `failed` unless
    # all were measured, so clients waiting for done/failed never wait on a set that can no longer finish.
    status = "done" if states == {JobStatus.DONE} else "failed" if states <= JOB_FINAL else "running"
    return {"set": set_id, "status": status, "config_hash": jobs[0].config_hash, "networks": networks}


def _measurement(m: Measurement) -> dict[str, Any]:
    out = {f: getattr(m, f) for f in ("median_us", "mean_us", "p10_us", "p90_us", "std_us", "n")}
    return out | {"rounds": m.rounds, "round_medians_us": m.round_medians_us, "estimator": m.estimator,
                  "context": m.context}  # fmt: skip


def network_status(session: Session, *, device_id: int, key: str, config_hash: str) -> dict[str, Any]:
    job = session.scalar(
        select(Job).where(Job.device_id == device_id, Job.op_key == key, Job.config_hash == config_hash)
        .order_by(Job.generation.desc()).limit(1)
    )  # fmt: skip
    if job is None:
        raise NotFound(f"network {key} was never queued on device {device_id} under config {config_hash[:12]}")
    m = session.scalar(
        select(Measurement).where(Measurement.device_id == device_id, Measurement.op_key == key,
                                  Measurement.config_hash == config_hash).order_by(Measurement.id.desc()).limit(1)
    )  # fmt: skip
    out: dict[str, Any] = {"key": key, "job_id": job.id, "status": JobStatus.DONE if m else job.status,
                           "config_hash": config_hash, "error": job.last_error}  # fmt: skip
    if m is not None:
        out["measurement"] = _measurement(m)
    return out
