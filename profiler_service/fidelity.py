"""How far a table is trusted, as the service keeps it: calibrations (stored by `dnas validate --calibrate`
when they beat the table's rule) and validation reports (every `dnas validate` run uploads its report).

Calibrations are stored only with 20+ networks and only when the fit beats the rule held out, so most checks
leave none; the report is what a person wants to see anyway: each network predicted against measured, the
error figures and the noise ceiling beside them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Calibration, LatencyTable, ValidationReport
from profiler_service.errors import NotFound
from profiler_service.timeutil import as_utc

# What a report list shows: everything but the per-network rows (they can be 10,000 long).
SUMMARY_DROP = ("rows",)


def calibration_public(row: Calibration, table_version: int, *, fitted_on: bool = False) -> dict[str, Any]:
    out = {
        "device_id": row.device_id,
        "version": row.version,
        "table_version": table_version,
        "space_hash": row.space_hash,
        "model": row.model,
        "metrics": row.metrics,
        "created_at": as_utc(row.created_at).isoformat(),
    }
    if fitted_on:
        out["fitted_on"] = row.fitted_on
    return out


def list_calibrations(session: Session, *, device_id: int, after: int, limit: int) -> list[dict[str, Any]]:
    """Calibrations by version, `limit` after version `after`, without what they were fitted on."""
    rows = session.execute(
        select(Calibration, LatencyTable.version)
        .join(LatencyTable, LatencyTable.id == Calibration.table_id)
        .where(Calibration.device_id == device_id, Calibration.version > after)
        .order_by(Calibration.version)
        .limit(limit)
    ).all()
    return [calibration_public(row, version) for row, version in rows]


def get_calibration(session: Session, *, device_id: int, version: int) -> dict[str, Any]:
    found = session.execute(
        select(Calibration, LatencyTable.version)
        .join(LatencyTable, LatencyTable.id == Calibration.table_id)
        .where(Calibration.device_id == device_id, Calibration.version == version)
    ).first()
    if found is None:
        raise NotFound(f"device {device_id} has no calibration version {version}")
    return calibration_public(found[0], found[1], fitted_on=True)


def _report_public(row: ValidationReport, table_version: int, *, rows: bool) -> dict[str, Any]:
    report = row.report if rows else {k: v for k, v in row.report.items() if k not in SUMMARY_DROP}
    return {
        "id": row.id,
        "device_id": row.device_id,
        "table_version": table_version,
        "created_at": as_utc(row.created_at).isoformat(),
        "report": report,
    }


def store_validation(session: Session, *, device_id: int, report: dict[str, Any]) -> dict[str, Any]:
    """Keep a report beside the table version it checked (which must exist on this device)."""
    version = report["table_version"]
    table_id = session.scalar(
        select(LatencyTable.id).where(LatencyTable.device_id == device_id, LatencyTable.version == version)
    )
    if table_id is None:
        raise NotFound(f"device {device_id} has no latency table version {version}")
    row = ValidationReport(device_id=device_id, table_id=table_id, report=report)
    session.add(row)
    session.commit()
    return _report_public(row, version, rows=False)


def list_validations(
    session: Session, *, device_id: int, after: int, limit: int, table_version: int | None = None
) -> list[dict[str, Any]]:
    """Reports by id, `limit` after the id `after`, without their per-network rows."""
    query = (
        select(ValidationReport, LatencyTable.version)
        .join(LatencyTable, LatencyTable.id == ValidationReport.table_id)
        .where(ValidationReport.device_id == device_id, ValidationReport.id > after)
        .order_by(ValidationReport.id)
        .limit(limit)
    )
    if table_version is not None:
        query = query.where(LatencyTable.version == table_version)
    return [_report_public(row, version, rows=False) for row, version in session.execute(query)]


def get_validation(session: Session, *, device_id: int, validation_id: int) -> dict[str, Any]:
    found = session.execute(
        select(ValidationReport, LatencyTable.version)
        .join(LatencyTable, LatencyTable.id == ValidationReport.table_id)
        .where(ValidationReport.device_id == device_id, ValidationReport.id == validation_id)
    ).first()
    if found is None:
        raise NotFound(f"device {device_id} has no validation report {validation_id}")
    return _report_public(found[0], found[1], rows=True)
