"""What the pages show, read through the service's own data functions (runs, tables, fidelity) and shaped for
templates. Nothing here decides who may see it: the routes do, through the API's checks."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Device, Job, LatencyTable, ProfilingRun
from db.states import RUN_FINAL, JobStatus, RunStatus
from profiler_service.api.deps import LAST_SEEN_EVERY_S
from profiler_service.api.routes.devices import public as device_public
from profiler_service.api.routes.tables import cached_table
from profiler_service.compare import by_layer, ratio_label, side_label
from profiler_service.errors import Invalid
from profiler_service.runs import run_status
from profiler_service.settings import ServiceSettings
from profiler_service.tables import find_table_id, list_tables
from profiler_service.timeutil import as_utc, utcnow
from profiler_service.ui import charts
from search.space.enumerate import enumerate_ops
from search.space.macro import FBNET_CANDIDATES, SearchSpace
from search.space.opspec import OpSpec, OpSpecError
from search.space.quantize import DTYPE_OF
from search.tables.schema import PublishedTable, TableError


# ---- devices ---------------------------------------------------------------------------------------------
def connected_window_s(settings: ServiceSettings) -> float:
    """How recently an agent must have called for its device to count as connected: its calls refresh
    last_seen_at at most every LAST_SEEN_EVERY_S, and it calls at least once per long poll or heartbeat."""
    return LAST_SEEN_EVERY_S + max(settings.long_poll_seconds, settings.lease_seconds / 3) + 15


def _age_s(when: datetime | None, now: datetime) -> float | None:
    return None if when is None else (now - as_utc(when)).total_seconds()  # type: ignore[operator]


def held_jobs(session: Session, device_ids: list[int] | None = None) -> dict[int, list[dict[str, Any]]]:
    """Live leases per device, one row per group (a run, a network set): what each agent is measuring now."""
    now = utcnow()
    query = (
        select(
            Job.device_id,
            Job.batch_group,
            Job.run_id,
            func.count(Job.id),
            func.max(Job.heartbeat_at),
            func.max(Job.lease_expires_at),
        )
        .where(Job.status == JobStatus.LEASED, Job.lease_expires_at > now)
        .group_by(Job.device_id, Job.batch_group, Job.run_id)
    )
    if device_ids is not None:
        query = query.where(Job.device_id.in_(device_ids))
    held: dict[int, list[dict[str, Any]]] = {}
    for device_id, group, run_id, n, beat, expires in session.execute(query):
        what = f"run {run_id}" if run_id else f"network set {group.split(':', 1)[1]}" if group else "a single job"
        held.setdefault(device_id, []).append(
            {
                "group": group,
                "run_id": run_id,
                "what": what,
                "jobs": n,
                "heartbeat_at": beat,
                "lease_expires_at": expires,
            }
        )
    return held


def device_rows(session: Session, settings: ServiceSettings, *, include_retired: bool) -> list[dict[str, Any]]:
    query = select(Device).order_by(Device.id)
    if not include_retired:
        query = query.where(Device.retired_at.is_(None))
    devices = list(session.scalars(query))
    ids = [d.id for d in devices]
    held = held_jobs(session, ids)
    running = dict(
        session.execute(
            select(ProfilingRun.device_id, func.count(ProfilingRun.id))
            .where(ProfilingRun.status == RunStatus.RUNNING, ProfilingRun.device_id.in_(ids))
            .group_by(ProfilingRun.device_id)
        ).all()
    )
    latest = latest_by_precision(session, ids)
    return [
        device_row(d, held.get(d.id, []), settings)
        | {"running_runs": running.get(d.id, 0), "latest_tables": latest.get(d.id, [])}
        for d in devices
    ]


def latest_by_precision(session: Session, device_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Each device's newest table of each precision, newest first: 'v3 int8, v2 fp32', so the overview does
    not present an int8 table as simply the device's latest."""
    rows = session.execute(
        select(LatencyTable.device_id, LatencyTable.version, LatencyTable.config).where(
            LatencyTable.device_id.in_(device_ids)
        )
    ).all()
    newest: dict[int, dict[str, int]] = {}
    for device_id, version, config in rows:
        precision = (config or {}).get("precision", "fp32")
        mine = newest.setdefault(device_id, {})
        mine[precision] = max(version, mine.get(precision, 0))
    return {
        d: [{"version": v, "precision": p} for p, v in sorted(m.items(), key=lambda kv: -kv[1])]
        for d, m in newest.items()
    }


def device_row(device: Device, held: list[dict[str, Any]], settings: ServiceSettings) -> dict[str, Any]:
    now = utcnow()
    beats = [as_utc(h["heartbeat_at"]) for h in held if h["heartbeat_at"] is not None]
    last = max([t for t in [as_utc(device.last_seen_at), *beats] if t is not None], default=None)
    age = _age_s(last, now)
    connected = device.retired_at is None and age is not None and age <= connected_window_s(settings)
    problem = device.agent_problem if device.retired_at is None else None  # what its agent says keeps it idle
    return {"device": device_public(device), "held": held, "connected": connected, "seen_ago_s": age,
            "problem": problem}  # fmt: skip


def recent_runs(
    session: Session, *, device_id: int | None = None, status: str | None = None, limit: int = 20
) -> list[Any]:
    """Newest first, each as the API answers it (`run_status`)."""
    query = select(ProfilingRun.id).order_by(ProfilingRun.id.desc()).limit(limit)
    if device_id is not None:
        query = query.where(ProfilingRun.device_id == device_id)
    if status is not None:
        query = query.where(ProfilingRun.status == status)
    return [run_status(session, run_id) for run_id in session.scalars(query)]


PRECISIONS = tuple(DTYPE_OF)  # fp32, int8: what a measurement config may ask for (search/space/quantize.py)


def precision_filter(value: str) -> str | None:
    """A page's `?precision=`: empty for every table; anything else but fp32 or int8 is refused, by name."""
    if value and value not in PRECISIONS:
        raise Invalid(f"precision must be {' or '.join(PRECISIONS)} (or empty for every table), not {value[:20]!r}")
    return value or None


def device_tables(session: Session, device_id: int, precision: str | None = None) -> list[dict[str, Any]]:
    """Published versions, newest first; with `precision`, only those measured at it (the API's own filter)."""
    rows = list_tables(session, device_id, None, after=0, limit=1000, precision=precision)
    return [
        {
            "version": t.version,
            "space_hash": t.space_hash,
            "space": t.space,
            "created_at": t.created_at,
            "entries": n,
            "run_id": t.run_id,
            "config": t.config,
            "precision": t.config.get("precision", "fp32"),
        }
        for t, n in reversed(rows)
    ]


def precision_pair(tables: list[dict[str, Any]]) -> dict[str, int] | None:
    """The newest int8 table and the newest fp32 table of its space (newest-first `tables`): what the device
    page's "fp32 against int8" link compares. None unless the device has both for one space."""
    int8 = next((t for t in tables if t["precision"] == "int8"), None)
    if int8 is None:
        return None
    fp32 = next((t for t in tables if t["precision"] == "fp32" and t["space_hash"] == int8["space_hash"]), None)
    return {"fp32": fp32["version"], "int8": int8["version"]} if fp32 else None


def device_names(session: Session) -> dict[int, str]:
    return dict(session.execute(select(Device.id, Device.name)).all())


# ---- runs ------------------------------------------------------------------------------------------------
def run_progress(session: Session, run_id: int) -> dict[str, Any]:
    """What the progress bar draws: done, failed, being measured, queued; the rate since the run started and
    the time left at that rate. An agent reports a batch when all its rounds are done, so the bar moves in
    steps; while a batch is out, `measuring` says how many ops it holds."""
    run = run_status(session, run_id)
    by_status = dict(
        session.execute(select(Job.status, func.count(Job.id)).where(Job.run_id == run_id).group_by(Job.status)).all()
    )
    measuring = min(by_status.get(JobStatus.LEASED, 0), max(run.total - run.done - run.failed, 0))
    queued = max(run.total - run.done - run.failed - measuring, 0)
    end = as_utc(run.finished_at) or utcnow()
    elapsed = max((end - as_utc(run.created_at)).total_seconds(), 1e-3)  # type: ignore[operator]
    measured_here = by_status.get(JobStatus.DONE, 0)  # measured for this run, not reused from earlier ones
    rate = measured_here / elapsed if measured_here else None
    remaining = run.total - run.done - run.failed
    eta = remaining / rate if rate and run.status == RunStatus.RUNNING else None
    return {
        "id": run.id,
        "device_id": run.device_id,
        "status": run.status,
        "total": run.total,
        "done": run.done,
        "failed": run.failed,
        "measuring": measuring,
        "queued": queued,
        "ops_per_s": rate,
        "eta_s": eta,
        "elapsed_s": elapsed,
        "table_version": run.table_version,
        "table_url": f"/ui/devices/{run.device_id}/tables/{run.table_version}" if run.table_version else None,
        "reason": run.reason,
        "errors": run.errors,
        "finished": run.status in RUN_FINAL,
        "finished_at": as_utc(run.finished_at).isoformat() if run.finished_at else None,
    }


# ---- tables ----------------------------------------------------------------------------------------------
def table_payload(session: Session, request_state: Any, device_id: int, version: str) -> dict[str, Any]:
    """A version's published JSON, through the same cache the API serves it from."""
    table_id, _ = find_table_id(session, device_id, version)
    cached = request_state.table_cache.get_or_build(table_id, lambda: cached_table(session, table_id))
    return json.loads(cached.json.body)


def _spec_summary(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: spec.get(k) for k in ("kind", "cin", "cout", "h", "w", "stride", "kernel", "expansion", "groups")}


def table_view(payload: dict[str, Any]) -> dict[str, Any]:
    """Everything the table page shows: the space, the rule, the heatmap the search's latency term sees, and
    every op with its spread and in-network cost."""
    table = PublishedTable.parse(payload)
    out: dict[str, Any] = {"payload": payload, "heatmap": None, "heatmap_error": None}
    try:
        space = table.space
        rule = table.rule
    except (OpSpecError, TableError, KeyError, ValueError) as exc:
        out["heatmap_error"] = f"this table's space or rule cannot be read: {exc}"
        space, rule = None, None
    entries = []
    for e in payload["entries"]:
        in_network = None
        if rule is not None:
            with contextlib.suppress(OpSpecError):
                in_network = rule.in_network_us(OpSpec.from_dict(e["spec"]), e["median_us"])
        median = e["median_us"]
        entries.append(
            {
                "key": e["key"],
                **_spec_summary(e["spec"]),
                "median_us": median,
                "p10_us": e["p10_us"],
                "p90_us": e["p90_us"],
                "std_us": e["std_us"],
                "n": e["n"],
                "in_network_us": in_network,
                "spread_pct": (e["p90_us"] - e["p10_us"]) / median * 100 if median else None,
            }
        )
    out["entries"] = entries
    out["context"] = _common_context([e.get("context") or {} for e in payload["entries"]])
    if space is not None:
        out["space"] = space
        out["slots"] = space.slots
        try:
            from search.tables.latency import build_lut  # torch: only for a table page with its space's heatmap

            lut = build_lut(space, table)
            en = enumerate_ops(space, table.dtype)
            values = [[float(v) for v in row] for row in lut.table.tolist()]
            out["heatmap"] = charts.heatmap(values, en.layer_keys)
            out["candidates"] = list(space.candidates)
            out["fixed_us"] = lut.fixed_us
            out["fastest_us"] = sum(min(r) for r in values) + lut.fixed_us
            out["dearest_us"] = sum(max(r) for r in values) + lut.fixed_us
        except TableError as exc:
            out["heatmap_error"] = str(exc)
    out["prediction"] = _prediction_view(payload.get("prediction") or {})
    return out


def _common_context(contexts: list[dict[str, Any]]) -> dict[str, Any]:
    """The measurement context every op shares (runtime, threads, affinity, ...): what shaped the whole table."""
    if not contexts:
        return {}
    common = {k: v for k, v in contexts[0].items() if not isinstance(v, dict | list)}
    for ctx in contexts[1:]:
        common = {k: v for k, v in common.items() if ctx.get(k) == v}
    return dict(sorted(common.items()))


def _prediction_view(pred: dict[str, Any]) -> dict[str, Any]:
    anchors = []
    constant = pred.get("constant_us")
    for a in pred.get("anchors") or []:
        predicted = a.get("sum_in_network_us", 0.0) + (constant or 0.0)
        measured = a.get("measured_us")
        anchors.append(
            {
                "key": a.get("key"),
                "arch": a.get("arch", []),
                "measured_us": measured,
                "sum_in_network_us": a.get("sum_in_network_us"),
                "computing_ops": a.get("computing_ops"),
                "predicted_us": predicted,
                "error_pct": (predicted - measured) / measured * 100 if measured else None,
            }
        )
    overhead = sorted((pred.get("overhead_us") or {}).items(), key=lambda kv: kv[1])
    return {
        "rule": pred.get("rule", "sum"),
        "description": pred.get("description"),
        "constant_us": constant,
        "constant_from": pred.get("constant_from"),
        "constant_spread_us": pred.get("constant_spread_us"),
        "constant_se_us": pred.get("constant_se_us"),
        "call_overhead_us": pred.get("call_overhead_us"),
        "per_op_us": pred.get("per_op_us"),  # overhead-v2 only: already inside every in-network cost above
        "per_op": pred.get("per_op") or {},
        "measured_as": pred.get("measured_as"),
        "same_rounds": pred.get("same_rounds"),
        "sessions": pred.get("sessions"),
        "overhead": overhead,
        "anchors": anchors,
    }


def all_tables(session: Session) -> list[dict[str, Any]]:
    """Every published version of every device, newest first: the compare page's choices, each labelled with
    its precision (one device's fp32 and int8 tables are otherwise told apart by version number only)."""
    names = device_names(session)
    rows = session.execute(
        select(
            LatencyTable.device_id,
            LatencyTable.version,
            LatencyTable.space_hash,
            LatencyTable.created_at,
            LatencyTable.config,
        )
        .order_by(LatencyTable.created_at.desc(), LatencyTable.id.desc())
        .limit(500)
    ).all()
    out = []
    for d, v, h, c, config in rows:
        precision = (config or {}).get("precision", "fp32")
        label = f"{names.get(d, d)} v{v} {precision} (space {h[:8]}, {as_utc(c):%Y-%m-%d %H:%M})"
        out.append({"ref": f"{d}:{v}", "label": label, "precision": precision})
    return out


def comparison(result: dict[str, Any], table_a: dict[str, Any]) -> dict[str, Any]:
    """What the compare page draws beyond the API's answer: which side is which precision, and the ratio per
    layer and block family (the same matched rows, laid out as the search sees them) when A's space reads."""
    grid = by_layer(result, table_a)
    a_name, b_name = result["a"]["precision"], result["b"]["precision"]
    if a_name == b_name:
        a_name, b_name = "A", "B"
    return {
        "grid": grid,
        "grid_chart": charts.ratio_grid(grid, a_name, b_name) if grid else None,
        "ratio_label": ratio_label(result),
        "a_label": side_label(result, "a"),
        "b_label": side_label(result, "b"),
    }


# ---- fidelity --------------------------------------------------------------------------------------------
FIGURE_ROWS = (
    ("raw", "table rule", "the table's prediction against the networks as measured"),
    ("drift_adjusted", "drift-adjusted", "the same with the device's drift since profiling divided out"),
    ("calibrated_held_out", "calibrated (held out)", "the calibration, each network predicted by a fit without it"),
    (
        "noise_ceiling",
        "noise ceiling",
        "even rounds against odd rounds of the same networks: the measurement's own noise, what no table can beat",
    ),
)


def figure_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": name, "what": what, **figures[key]}
        for key, name, what in FIGURE_ROWS
        if isinstance(figures.get(key), dict)
    ]


def validation_scatter(report: dict[str, Any]) -> dict[str, Any] | None:
    points = [
        {"measured_us": r["measured_us"], "predicted_us": r["predicted_us"], "label": f"network {i + 1}"}
        for i, r in enumerate(report.get("rows") or [])
    ]
    return charts.scatter(points)


def calibration_scatter(session: Session, request_state: Any, calibration: dict[str, Any]) -> dict[str, Any] | None:
    """The networks a calibration was fitted on, predicted by its table's rule against as measured (the stored
    numbers are drift-adjusted; the drift it recorded puts them back). Older calibrations stored both."""
    fitted = calibration.get("fitted_on") or []
    drift = (calibration.get("metrics") or {}).get("drift") or 1.0
    points = []
    table = None
    for i, row in enumerate(fitted):
        if "predicted_us" in row and "measured_us" in row:
            points.append(
                {"measured_us": row["measured_us"], "predicted_us": row["predicted_us"], "label": f"network {i + 1}"}
            )
            continue
        if "arch" not in row or "measured_adjusted_us" not in row:
            continue
        if table is None:
            table = PublishedTable.parse(
                table_payload(session, request_state, calibration["device_id"], str(calibration["table_version"]))
            )
        try:
            predicted = table.predict_us(row["arch"])
        except (OpSpecError, TableError, KeyError):
            continue
        points.append(
            {"measured_us": row["measured_adjusted_us"] * drift, "predicted_us": predicted, "label": f"network {i + 1}"}
        )
    return charts.scatter(points)


# ---- forms -----------------------------------------------------------------------------------------------
RUN_DEFAULTS = {
    "resolution": "224",
    "width": "1.0",
    "num_classes": "1000",
    "warmup": "10",
    "rounds": "20",
    "runs_per_round": "3",
    "anchors": "8",
    "precision": "fp32",
}
CANDIDATES = FBNET_CANDIDATES


def space_label(space: dict[str, Any] | SearchSpace) -> str:
    if isinstance(space, SearchSpace):
        space = space.to_dict()
    return (
        f"{space.get('name', 'custom')} {space.get('resolution')} px, width {space.get('width')}, "
        f"{len(space.get('candidates') or [])} candidates"
    )
