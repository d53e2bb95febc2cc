"""Published tables as targets: a table read from HW-NAS-Bench becomes a version of a device of platform
`imported`, served, versioned and immutable like any measured table.

Such a device has no agent: its token hash is of a secret nobody was shown, the service refuses to profile it
or to measure networks on it (409), and refuses to issue it an agent token. Its numbers are kept as
measurements (one job per op, `done` at import, never leased) so every reader of tables reads them the same
way; what makes them different is said in the table's config, provenance and prediction.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Device, Job, LatencyTable, LatencyTableEntry, Measurement, Operator
from db.states import JobStatus
from profiler_service import notify
from profiler_service.errors import Conflict
from profiler_service.operators import insert_ignore
from profiler_service.security import hash_token, new_token
from profiler_service.tables import content_hash, next_version, serialise, table_payload
from profiler_service.timeutil import utcnow
from search.tables.hwnasbench import RULE_DESCRIPTION, ImportedTable

IMPORTED = "imported"


def refuse_if_imported(device: Device, action: str) -> None:
    """The one check every route that would need the device's agent makes: 409 with the reason."""
    if device.platform == IMPORTED:
        raise Conflict(
            f"device {device.id} ({device.name}) is an imported table (platform {IMPORTED!r}): it has no agent, so "
            f"it cannot {action}; profile a device you can run an agent on"
        )


def imported_config(table: ImportedTable) -> dict[str, Any]:
    """What the numbers are, in the place a measured table says how it was measured."""
    return {
        "runtime": IMPORTED,
        "precision": "fp32",
        "source": table.provenance()["source"],
        "hw_device": table.hw_device,
        "dataset": table.dataset,
        "metric": "latency",
        "measured_as": IMPORTED,
        "provenance": table.provenance(),
    }


def _config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _device(session: Session, name: str, table: ImportedTable) -> Device:
    device = session.scalar(select(Device).where(Device.name == name))
    if device is not None:
        if device.platform != IMPORTED:
            raise Conflict(f"device {device.id} ({name}) is a {device.platform} device, not an imported one; "
                           "pick another --device-name for the imported table")  # fmt: skip
        if device.retired_at is not None:
            raise Conflict(f"device {device.id} ({name}) is retired; import under another name")
        return device
    # No agent token is ever shown: the hash is of a secret thrown away here, so no caller can be this device.
    device = Device(name=name, platform=IMPORTED, token_hash=hash_token(new_token("dnas_none")),
                    properties={"source": table.provenance()["source"], "hw_device": table.hw_device,
                                "obtained": table.provenance()["obtained"]})  # fmt: skip
    session.add(device)
    try:
        session.flush()
    except IntegrityError:  # a concurrent import created it: take that one
        session.rollback()
        return _device(session, name, table)
    return device


def import_table(
    session: Session, *, table: ImportedTable, device_name: str | None = None
) -> tuple[LatencyTable, bool]:
    """Publish `table` as the next version of its imported device (created on first import). Importing the same
    numbers again returns the version that holds them (False: nothing new was published)."""
    name = device_name or f"hwnasbench-{table.hw_device}"
    config = imported_config(table)
    config_hash = _config_hash(config)
    stats = {key: _stats(e.latency_us) for key, e in table.entries.items()}
    prediction = {"rule": "sum", "description": RULE_DESCRIPTION, "measured_as": IMPORTED, "same_rounds": None,
                  "sessions": 0}  # fmt: skip
    digest = content_hash(table.space.hash, config_hash, stats, prediction)
    for _ in range(3):
        device = _device(session, name, table)
        same = session.scalar(
            select(LatencyTable).where(LatencyTable.device_id == device.id, LatencyTable.content_sha256 == digest)
        )
        if same is not None:
            session.commit()
            return same, False
        try:
            published = _publish(session, device, table, config, config_hash, stats, prediction, digest)
            session.commit()
            return published, True
        except IntegrityError:  # another import took the version number: try the next one
            session.rollback()
    raise Conflict(f"could not take a version number for device {name} (concurrent imports); try again")


def _stats(us: float) -> dict[str, Any]:
    return {"median_us": us, "mean_us": us, "p10_us": us, "p90_us": us, "std_us": 0.0, "n": 1}


def _publish(session: Session, device: Device, table: ImportedTable, config: dict[str, Any], config_hash: str,
             stats: dict[str, dict[str, Any]], prediction: dict[str, Any], digest: str) -> LatencyTable:  # fmt: skip
    keys = list(table.entries)
    insert_ignore(session, Operator, [{"key": k, "spec": e.spec.to_dict()} for k, e in table.entries.items()])
    generation = dict(
        session.execute(
            select(Job.op_key, func.max(Job.generation))
            .where(Job.device_id == device.id, Job.config_hash == config_hash, Job.op_key.in_(keys))
            .group_by(Job.op_key)
        ).all()
    )
    now = utcnow()
    group = f"import:{digest[:16]}"
    jobs = {}
    for key in keys:
        jobs[key] = Job(device_id=device.id, op_key=key, config_hash=config_hash, config=config,
                        generation=generation.get(key, -1) + 1, status=JobStatus.DONE, attempts=1, max_attempts=1,
                        batch_group=group, finished_at=now)  # fmt: skip
    session.add_all(jobs.values())
    session.flush()
    measurements = []
    for key, entry in table.entries.items():
        context = {"source": "HW-NAS-Bench", "hwnasbench_name": entry.name, "value_ms": entry.latency_ms,
                   "zero_priced": entry.latency_ms == 0.0}  # fmt: skip
        if entry.energy_mj is not None:
            context["energy_mj"] = entry.energy_mj
        measurements.append(Measurement(job_id=jobs[key].id, attempt=1, device_id=device.id, op_key=key,
                                        config_hash=config_hash, estimator="published", context=context,
                                        **stats[key]))  # fmt: skip
    session.add_all(measurements)
    session.flush()
    version = next_version(session, device.id)
    published = LatencyTable(device_id=device.id, version=version, run_id=None, space_hash=table.space.hash,
                             space=table.space.to_dict(), config_hash=config_hash, config=config, fingerprint=None,
                             prediction=prediction, content_sha256=digest)  # fmt: skip
    session.add(published)
    session.flush()
    notify.table_published(session, device.id)  # every worker's `latest` of the device moves at commit
    session.add_all(LatencyTableEntry(table_id=published.id, op_key=m.op_key, measurement_id=m.id)
                    for m in measurements)  # fmt: skip
    session.flush()
    published.payload, published.payload_sha256 = serialise(table_payload(session, published))
    return published
