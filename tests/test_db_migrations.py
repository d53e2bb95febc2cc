import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, Table, inspect, select

from db import migrate
from db.engine import make_engine, make_sessionmaker
from db.models import Base, Device
from profiler_service.schemas import MeasureConfig
from profiler_service.security import hash_token
from profiler_service.tables import STAT_FIELDS, content_hash
from search.space.enumerate import enumerate_ops
from tests.service_harness import running_service
from tests.tables import MINI

TABLES = {
    "devices", "operators", "profiling_runs", "run_operators", "jobs", "measurements",
    "latency_tables", "latency_table_entries", "service_settings", "api_tokens", "calibrations", "validation_reports",
    "ui_sessions",
}  # fmt: skip


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _drift(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


def _up_and_down(url: str) -> None:
    assert _tables(url) == set()
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision()
    assert _tables(url) == TABLES
    # The migrations must build exactly what the models declare, or autogenerate would see a difference.
    assert _drift(url) == []
    migrate.downgrade(url, "base")
    assert migrate.current_revision(url) is None
    assert _tables(url) == set()
    migrate.upgrade(url)  # and up again: downgrade left nothing behind that blocks it
    assert _tables(url) == TABLES


def test_sqlite_upgrade_to_head_and_back(sqlite_url):
    _up_and_down(sqlite_url)


@pytest.mark.postgres
def test_postgres_upgrade_to_head_and_back(pg_url):
    _up_and_down(pg_url)


# ---- upgrading a database that holds data -------------------------------------------------------------
FIRST = "0001"
AGENT_TOKEN, READER_TOKEN = "dnas_agent_seeded-before-the-upgrade", "dnas_read_seeded-before-the-upgrade"
T0 = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


def _seed_first_revision(url: str) -> dict[str, Any]:
    """A database as the service at revision 0001 left it: a device with a published table (3 measured ops),
    a second run still queued, a reader token. Written through the tables as revision 0001 created them
    (reflected from the database), so the seed stays a 0001 database whatever the models become."""
    migrate.upgrade(url, FIRST)
    assert migrate.current_revision(url) == FIRST
    engine = make_engine(url)
    meta = MetaData()
    meta.reflect(engine)
    t = meta.tables
    ops = list(enumerate_ops(MINI).ops.items())[:4]
    config = MeasureConfig(threads=1, warmup=10, runs=50)
    stats = {  # distinct per op, as real measurements are
        key: {"median_us": 120.5 + 37 * i, "mean_us": 124.25 + 37 * i, "p10_us": 118.0 + 37 * i,
              "p90_us": 131.75 + 37 * i, "std_us": 4.5 + i, "n": 50}
        for i, (key, _) in enumerate(ops[:3])
    }  # fmt: skip
    fingerprint = {"model": "Pixel 7", "soc": "Tensor G2", "os": "Android 14", "runtime": "onnxruntime"}
    with engine.begin() as c:
        c.execute(t["service_settings"].insert(), {"name": "admin_token_sha256", "value": hash_token("old-admin")})
        c.execute(t["api_tokens"].insert(), {"id": 1, "name": "ci", "role": "reader",
                                             "token_hash": hash_token(READER_TOKEN), "created_at": T0})  # fmt: skip
        c.execute(t["devices"].insert(), {"id": 1, "name": "pixel-7", "platform": "android",
                                          "properties": {"lab": "bench-2"}, "fingerprint": fingerprint,
                                          "token_hash": hash_token(AGENT_TOKEN), "created_at": T0,
                                          "last_seen_at": T0})  # fmt: skip
        c.execute(t["operators"].insert(), [
            {"key": key, "spec": spec.to_dict(), "onnx_sha256": f"{i:064x}", "onnx_bytes": 4096 + i, "created_at": T0}
            for i, (key, spec) in enumerate(ops)
        ])  # fmt: skip
        c.execute(t["profiling_runs"].insert(), [
            {"id": 1, "device_id": 1, "space_hash": MINI.hash, "space": MINI.to_dict(), "config_hash": config.hash,
             "config": config.model_dump(), "status": "published", "total": 3, "created_at": T0, "finished_at": T0},
            {"id": 2, "device_id": 1, "space_hash": MINI.hash, "space": MINI.to_dict(), "config_hash": config.hash,
             "config": config.model_dump(), "status": "running", "total": 4, "created_at": T0, "finished_at": None},
        ])  # fmt: skip
        c.execute(t["run_operators"].insert(), [{"run_id": 1, "op_key": k} for k, _ in ops[:3]]
                  + [{"run_id": 2, "op_key": k} for k, _ in ops])  # fmt: skip
        c.execute(t["jobs"].insert(), [
            {"id": i + 1, "device_id": 1, "op_key": key, "config_hash": config.hash, "config": config.model_dump(),
             "generation": 0, "status": "done" if key in stats else "queued", "attempts": 1 if key in stats else 0,
             "max_attempts": 3, "created_at": T0, "finished_at": T0 if key in stats else None}
            for i, (key, _) in enumerate(ops)
        ])  # fmt: skip
        c.execute(t["measurements"].insert(), [
            {"id": i + 1, "job_id": i + 1, "attempt": 1, "device_id": 1, "op_key": key, "config_hash": config.hash,
             **values, "samples_us": None, "context": {"runtime": "onnxruntime", "threads": 1}, "created_at": T0}
            for i, (key, values) in enumerate(stats.items())
        ])  # fmt: skip
        sha = content_hash(MINI.hash, config.hash, stats)
        c.execute(t["latency_tables"].insert(), {
            "id": 1, "device_id": 1, "version": 1, "run_id": 1, "space_hash": MINI.hash, "space": MINI.to_dict(),
            "config_hash": config.hash, "config": config.model_dump(), "fingerprint": fingerprint,
            "content_sha256": sha, "created_at": T0,
        })  # fmt: skip
        c.execute(t["latency_table_entries"].insert(),
                  [{"table_id": 1, "op_key": key, "measurement_id": i + 1} for i, key in enumerate(stats)])  # fmt: skip
    engine.dispose()
    return {"stats": stats, "sha": sha, "fingerprint": fingerprint}


def _upgrade_with_data(url: str, workdir: Path) -> None:
    seeded = _seed_first_revision(url)
    migrate.upgrade(url)  # what `dnas serve` does on start, to whatever head is now
    assert migrate.current_revision(url) == migrate.head_revision()
    # The device's agent token still authenticates it: agents keep working across the upgrade.
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        device = session.get(Device, 1)
        assert device is not None and device.token_hash == hash_token(AGENT_TOKEN)
    engine.dispose()
    # Everything a user reads is still there, through the service at head, with the pre-upgrade reader token.
    with running_service(url, workdir) as svc, svc.client(READER_TOKEN) as reader:
        devices = reader.get("/v1/devices").raise_for_status().json()
        assert [(d["name"], d["platform"], d["properties"], d["fingerprint"]) for d in devices] == [
            ("pixel-7", "android", {"lab": "bench-2"}, seeded["fingerprint"])
        ]
        table = reader.get("/v1/devices/1/latency-tables/latest", headers={"Accept-Encoding": "identity"})
        assert table.status_code == 200, table.text
        # Its bytes are built once, on first read after the upgrade, and the ETag names exactly those bytes.
        assert table.headers["etag"] == f'"{hashlib.sha256(table.content).hexdigest()}"'
        again = reader.get("/v1/devices/1/latency-tables/1", headers={"If-None-Match": table.headers["etag"],
                                                                      "Accept-Encoding": "identity"})  # fmt: skip
        assert again.status_code == 304
        payload = table.json()
        assert (payload["version"], payload["content_sha256"], payload["space_hash"]) == (1, seeded["sha"], MINI.hash)
        assert {e["key"]: {f: e[f] for f in STAT_FIELDS} for e in payload["entries"]} == seeded["stats"]
        published, running = (reader.get(f"/v1/profiling-runs/{i}").raise_for_status().json() for i in (1, 2))
        assert (published["status"], published["total"], published["done"], published["table_version"]) == (
            "published",
            3,
            3,
            1,
        )
        # The unfinished run keeps its measured ops and its queued job.
        assert (running["status"], running["total"], running["done"], running["failed"]) == ("running", 4, 3, 0)


def test_sqlite_upgrade_from_the_first_revision_keeps_the_data(sqlite_url, tmp_path):
    _upgrade_with_data(sqlite_url, tmp_path)


@pytest.mark.postgres
def test_postgres_upgrade_from_the_first_revision_keeps_the_data(pg_url, tmp_path):
    _upgrade_with_data(pg_url, tmp_path)


# ---- 0006: the run a job serves, as a column ----------------------------------------------------------
def _upgrade_jobs_to_run_ids(url: str) -> None:
    """Before 0006 a job's run was only in its batch group `run:{id}`: the upgrade reads it from there, for
    groups naming a run that exists, and leaves every other job (network sets, single networks) without one."""
    migrate.upgrade(url, "0005")
    engine = make_engine(url)
    meta = MetaData()
    meta.reflect(engine)  # the tables as 0005 left them
    t = meta.tables
    run = {"device_id": 1, "space_hash": MINI.hash, "space": MINI.to_dict(), "config_hash": "c" * 64,
           "config": {}, "status": "running", "total": 1, "created_at": T0}  # fmt: skip
    groups = {1: "run:1", 2: "run:12", 3: "net:0123456789abcdef", 4: None, 5: "run:99"}  # run 99 never existed
    with engine.begin() as c:
        c.execute(t["devices"].insert(), {"id": 1, "name": "pixel-7", "platform": "android", "properties": {},
                                          "token_hash": hash_token(AGENT_TOKEN), "created_at": T0})  # fmt: skip
        c.execute(t["operators"].insert(), {"key": "op-a", "spec": {}, "created_at": T0})
        c.execute(t["profiling_runs"].insert(), [{"id": 1, **run}, {"id": 12, **run}])
        c.execute(t["jobs"].insert(), [
            {"id": i, "device_id": 1, "op_key": "op-a", "config_hash": "c" * 64, "config": {}, "generation": i,
             "status": "queued", "attempts": 0, "max_attempts": 3, "batch_group": group, "created_at": T0}
            for i, group in groups.items()
        ])  # fmt: skip
    migrate.upgrade(url)
    jobs_at_head = Table("jobs", MetaData(), autoload_with=engine)
    with engine.connect() as c:
        jobs = dict(c.execute(select(jobs_at_head.c.id, jobs_at_head.c.run_id)).all())
    assert jobs == {1: 1, 2: 12, 3: None, 4: None, 5: None}
    migrate.downgrade(url, "0005")  # and back: the column goes, the groups stay
    columns = {col["name"] for col in inspect(engine).get_columns("jobs")}
    engine.dispose()
    assert "run_id" not in columns and "batch_group" in columns


def test_sqlite_upgrade_gives_jobs_their_run(sqlite_url):
    _upgrade_jobs_to_run_ids(sqlite_url)


@pytest.mark.postgres
def test_postgres_upgrade_gives_jobs_their_run(pg_url):
    _upgrade_jobs_to_run_ids(pg_url)


# ---- 0007: dashboard sessions kept by the service; the old signing key deleted -------------------------------
def _upgrade_ends_signed_cookies(url: str) -> None:
    """The HMAC key that signed dashboard cookies sat in service_settings beside the token hashes: the upgrade
    deletes it (every cookie it signed stops working) and keeps every other setting."""
    migrate.upgrade(url, "0006")
    engine = make_engine(url)
    settings = Table("service_settings", MetaData(), autoload_with=engine)
    with engine.begin() as c:
        c.execute(settings.insert(), [{"name": "ui_session_key", "value": "ab" * 32},
                                      {"name": "admin_token_sha256", "value": "cd" * 32}])  # fmt: skip
    migrate.upgrade(url)
    with engine.connect() as c:
        kept = dict(c.execute(select(settings.c.name, settings.c.value)).all())
    assert kept == {"admin_token_sha256": "cd" * 32}
    assert "ui_sessions" in inspect(engine).get_table_names()
    migrate.downgrade(url, "0006")
    assert "ui_sessions" not in inspect(engine).get_table_names()
    engine.dispose()


def test_sqlite_upgrade_ends_signed_cookies(sqlite_url):
    _upgrade_ends_signed_cookies(sqlite_url)


@pytest.mark.postgres
def test_postgres_upgrade_ends_signed_cookies(pg_url):
    _upgrade_ends_signed_cookies(pg_url)


# ---- 0009: partial indexes over pending jobs, for the claim ----------------------------------------------------
def _pending_indexes(engine) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The claim's partial indexes on jobs as the database states them: name -> definition."""
    query = (
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs'"
        if engine.dialect.name == "postgresql"
        else "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs'"
    )
    with engine.connect() as c:
        return {name: sql for name, sql in c.exec_driver_sql(query) if name.startswith("ix_jobs_pending")}


def _upgrade_adds_claim_indexes(url: str) -> None:
    """The upgrade builds both indexes over pending jobs only (a done job is never in them), and the downgrade
    drops them."""
    migrate.upgrade(url, "0008")
    engine = make_engine(url)
    assert _pending_indexes(engine) == {}
    migrate.upgrade(url)
    indexes = _pending_indexes(engine)
    assert set(indexes) == {"ix_jobs_pending", "ix_jobs_pending_group"}
    for sql in indexes.values():
        assert "leased" in sql and "queued" in sql and "done" not in sql, sql
        assert "WHERE" in sql.upper(), sql
    migrate.downgrade(url, "0008")
    assert _pending_indexes(engine) == {}
    engine.dispose()


def test_sqlite_upgrade_adds_claim_indexes(sqlite_url):
    _upgrade_adds_claim_indexes(sqlite_url)


@pytest.mark.postgres
def test_postgres_upgrade_adds_claim_indexes(pg_url):
    _upgrade_adds_claim_indexes(pg_url)
