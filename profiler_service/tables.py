"""Latency tables: building one from a run's measurements (published by profiler_service/lifecycle.py, in one
transaction with the run's status, and never changed after), serialisation (JSON, CSV). Comparing two tables is
profiler_service/compare.py."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import Device, Job, LatencyTable, LatencyTableEntry, Measurement, Operator, ProfilingRun, RunOperator
from profiler_service import notify
from profiler_service.errors import Invalid, NotFound
from profiler_service.timeutil import as_utc
from search.space.macro import SearchSpace
from search.space.quantize import dtype_of
from search.tables.predict import fit_rule
from search.tables.schema import Entry, Prediction, PublishedTable, TableDevice

STAT_FIELDS = ("median_us", "mean_us", "p10_us", "p90_us", "std_us", "n")


def content_hash(
    space_hash: str, config_hash: str, entries: dict[str, dict[str, Any]], prediction: dict[str, Any] | None = None
) -> str:
    body: dict[str, Any] = {"space": space_hash, "config": config_hash, "entries": entries}
    if prediction is not None:
        body["prediction"] = prediction
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _role(spec: dict[str, Any]) -> str:
    """Entries are ops; probes and anchor networks are measured with them to fit the prediction rule."""
    kind = spec.get("kind")
    return "probe" if kind == "probe" else "anchor" if kind == "network" else "op"


def prediction_of(run: ProfilingRun, measurements: list[Measurement], specs: dict[str, dict[str, Any]]) -> dict:
    """The table's prediction rule (search/tables/predict.py), fitted on the run's probes and anchor networks."""
    space = SearchSpace.from_dict(run.space)
    medians = {m.op_key: m.median_us for m in measurements if _role(specs[m.op_key]) == "op"}
    probes = {m.op_key: m.median_us for m in measurements if _role(specs[m.op_key]) == "probe"}
    # By key: the rows come in whatever order the database returned them, and a table republished from the
    # same measurements must list (and sum) its anchors the same way.
    anchor_rows = sorted((m for m in measurements if _role(specs[m.op_key]) == "anchor"), key=lambda m: m.op_key)
    anchors = [(specs[m.op_key]["arch"], m.median_us) for m in anchor_rows]
    _, published = fit_rule(space, medians, probes, anchors, dtype_of(run.config.get("precision", "fp32")))
    for row, m in zip(published.get("anchors", []), anchor_rows, strict=True):
        row["key"] = m.op_key
    return published


def _chosen_measurements(session: Session, run: ProfilingRun, keys: list[str],
                         specs: dict[str, dict[str, Any]]) -> tuple[list[Measurement], dict[str, Any]]:  # fmt: skip
    """One measurement per key: each op's newest, and the probes' and anchors' from the session (the lease,
    i.e. the interleaved batch) that measured most of those ops, so the rule corrects ops with numbers taken
    in the same rounds. Says how far that held."""
    rows = session.execute(
        select(Measurement, Job.lease_token)
        .join(Job, Job.id == Measurement.job_id)
        .where(Measurement.device_id == run.device_id, Measurement.config_hash == run.config_hash,
               Measurement.op_key.in_(keys))
        .order_by(Measurement.id)
    ).all()  # fmt: skip
    by_key: dict[str, list[tuple[Measurement, str | None]]] = {}
    for m, token in rows:
        by_key.setdefault(m.op_key, []).append((m, token))
    if set(by_key) != set(keys):
        return [], {}
    ops = [k for k in keys if _role(specs[k]) == "op"]
    sessions = Counter(by_key[k][-1][1] for k in ops)
    main_session = sessions.most_common(1)[0][0] if sessions else None
    chosen: list[tuple[Measurement, str | None]] = []
    for key in keys:
        history = by_key[key]
        same = [h for h in history if h[1] == main_session] if _role(specs[key]) != "op" else []
        chosen.append(same[-1] if same else history[-1])
    interleaved = [m.rounds is not None for m, _ in chosen if _role(specs[m.op_key]) == "op"]
    provenance = {
        "measured_as": "interleaved" if all(interleaved) else "block" if not any(interleaved) else "mixed",
        "same_rounds": all(token == main_session for _, token in chosen) and main_session is not None,
        "sessions": len({token for _, token in chosen}),
    }
    return [m for m, _ in chosen], provenance


def next_version(session: Session, device_id: int) -> int:
    """A device's next table version: versions count per device, whatever made the table (a run, an import)."""
    return (session.scalar(select(func.max(LatencyTable.version)).where(LatencyTable.device_id == device_id)) or 0) + 1


def build_table(session: Session, run: ProfilingRun) -> LatencyTable | None:
    """The run's table as the device's next version, with all its entries and its payload, written in the
    caller's transaction (profiler_service/lifecycle.py publishes: the run's status flip and this commit
    together). None if an op lacks a measurement. Raises IntegrityError when another run of the device took
    the version number first."""
    keys = list(session.scalars(select(RunOperator.op_key).where(RunOperator.run_id == run.id)))
    specs = {k: v for k, v in session.execute(select(Operator.key, Operator.spec).where(Operator.key.in_(keys)))}
    measurements, provenance = _chosen_measurements(session, run, keys, specs)
    if len(measurements) != len(keys):
        return None
    prediction = prediction_of(run, measurements, specs) | provenance
    stats = {m.op_key: {f: getattr(m, f) for f in STAT_FIELDS} for m in measurements}
    device = session.get(Device, run.device_id)
    version = next_version(session, run.device_id)
    table = LatencyTable(
        device_id=run.device_id,
        version=version,
        run_id=run.id,
        space_hash=run.space_hash,
        space=run.space,
        config_hash=run.config_hash,
        config=run.config,
        fingerprint=device.fingerprint if device else None,
        prediction=prediction,
        content_sha256=content_hash(run.space_hash, run.config_hash, stats, prediction),
    )
    session.add(table)
    session.flush()
    notify.table_published(session, run.device_id)  # every worker's `latest` of the device moves at commit
    session.add_all(LatencyTableEntry(table_id=table.id, op_key=m.op_key, measurement_id=m.id) for m in measurements)
    session.flush()
    table.payload, table.payload_sha256 = serialise(table_payload(session, table))
    return table


# ---- reading --------------------------------------------------------------------------------------------
def serialise(table: PublishedTable | dict[str, Any]) -> tuple[str, str]:
    """The bytes a version is served as, and their SHA-256 (its ETag). Done once, at publication. A table
    already in its published form as a dict (e.g. read back from the stored bytes) is written the same way."""
    text = table.to_json() if isinstance(table, PublishedTable) else json.dumps(table, **PublishedTable.JSON_FORMAT)
    return text, hashlib.sha256(text.encode()).hexdigest()


VERSION = re.compile(r"[0-9]{1,10}")  # ASCII digits only: str.isdigit() also accepts "²", which int() refuses


def parse_version(version: str) -> int | None:
    """'latest' -> None, else the version number; anything else is a 422."""
    if version == "latest":
        return None
    if not VERSION.fullmatch(version) or not 1 <= int(version) <= 2**31 - 1:
        raise Invalid(f"version must be a positive number or 'latest', got {version[:40]!r}")
    return int(version)


def of_precision(precision: str):  # type: ignore[no-untyped-def]
    """Tables measured at this precision. Every config records one (`fp32` since the first table), so the
    filter reads the stored config rather than a column of its own."""
    return LatencyTable.config["precision"].as_string() == precision


def find_table_id(
    session: Session, device_id: int, version: str, space_hash: str | None = None, precision: str | None = None
) -> tuple[int, int]:
    """(table id, version number): one indexed lookup that loads none of the table's JSON (the hot path).
    `precision` narrows 'latest' (and checks a numbered version): an int8 client never gets an fp32 table."""
    query = select(LatencyTable.id, LatencyTable.version).where(LatencyTable.device_id == device_id)
    if space_hash:
        query = query.where(LatencyTable.space_hash == space_hash)
    if precision:
        query = query.where(of_precision(precision))
    number = parse_version(version)
    if number is None:
        query = query.order_by(LatencyTable.version.desc()).limit(1)
    else:
        query = query.where(LatencyTable.version == number)
    found = session.execute(query).first()
    if found is None:
        scope = (f" for space {space_hash}" if space_hash else "") + (f" at precision {precision}" if precision else "")
        raise NotFound(f"device {device_id} has no latency table version {version[:40]}{scope}")
    return found[0], found[1]


def stored_payload(session: Session, table: LatencyTable) -> tuple[str, str]:
    """The version's stored bytes and ETag. A table published before migration 0004 has none yet: its
    payload is built now, once, and stored (write-once: a concurrent reader's copy wins, being equal)."""
    payload = session.scalar(select(LatencyTable.payload).where(LatencyTable.id == table.id))
    if payload is not None and table.payload_sha256:
        return payload, table.payload_sha256
    text, digest = serialise(table_payload(session, table))
    session.execute(
        update(LatencyTable)
        .where(LatencyTable.id == table.id, LatencyTable.payload.is_(None))
        .values(payload=text, payload_sha256=digest)
    )
    session.commit()
    row = session.execute(
        select(LatencyTable.payload, LatencyTable.payload_sha256).where(LatencyTable.id == table.id)
    ).one()
    return row[0], row[1]


def table_payload(session: Session, table: LatencyTable) -> PublishedTable:
    """The published form (search/tables/schema.py): metadata, then one entry per op key with its spec and
    statistics."""
    device = session.get(Device, table.device_id)
    rows = session.execute(
        select(LatencyTableEntry.op_key, Operator.spec, Measurement)
        .join(Operator, Operator.key == LatencyTableEntry.op_key)
        .join(Measurement, Measurement.id == LatencyTableEntry.measurement_id)
        .where(LatencyTableEntry.table_id == table.id)
        .order_by(LatencyTableEntry.op_key)
    ).all()
    entries = [
        Entry(key=key, spec=spec, **{f: getattr(m, f) for f in STAT_FIELDS}, context=m.context)
        for key, spec, m in rows
        if _role(spec) == "op"
    ]
    table_doc = PublishedTable(
        device=TableDevice(id=device.id, name=device.name, platform=device.platform, fingerprint=table.fingerprint)
        if device
        else TableDevice(id=table.device_id),
        version=table.version,
        created_at=as_utc(table.created_at).isoformat(),
        space_hash=table.space_hash,
        space=table.space,
        config_hash=table.config_hash,
        config=table.config,
        content_sha256=table.content_sha256,
        unit="microseconds",
        prediction=Prediction.model_validate(table.prediction) if table.prediction else Prediction.plain(),
        entries=entries,
    )
    if (table.config or {}).get("provenance"):  # an imported table: where its numbers come from, in plain sight
        table_doc = table_doc.model_copy(update={"imported_from": table.config["provenance"]})
    return table_doc


def table_csv(payload: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["key", *STAT_FIELDS])
    for e in payload["entries"]:
        writer.writerow([e["key"], *(e[f] for f in STAT_FIELDS)])
    return out.getvalue()


def list_tables(
    session: Session,
    device_id: int,
    space_hash: str | None,
    *,
    after: int = 0,
    limit: int = 100,
    precision: str | None = None,
) -> list[tuple[LatencyTable, int]]:
    """Versions after `after`, oldest first, each with its number of entries (counted, not loaded)."""
    entries = (  # the ops, as served: not the probes and anchor networks measured beside them
        select(func.count())
        .where(LatencyTableEntry.table_id == LatencyTable.id)
        .where(~LatencyTableEntry.op_key.startswith("probe-"), ~LatencyTableEntry.op_key.startswith("net-"))
        .correlate(LatencyTable)
        .scalar_subquery()
    )
    query = (
        select(LatencyTable, entries)
        .where(LatencyTable.device_id == device_id, LatencyTable.version > after)
        .order_by(LatencyTable.version)
        .limit(limit)
    )
    if space_hash:
        query = query.where(LatencyTable.space_hash == space_hash)
    if precision:
        query = query.where(of_precision(precision))
    return [(table, n) for table, n in session.execute(query)]
