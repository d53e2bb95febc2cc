"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-24 05:03:13.499826
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("fingerprint", sa.JSON(), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
        sa.UniqueConstraint("name", name=op.f("uq_devices_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_devices_token_hash")),
    )
    op.create_table(
        "operators",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("onnx_sha256", sa.String(length=64), nullable=True),
        sa.Column("onnx_bytes", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_operators")),
    )
    op.create_table(
        "service_settings",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_service_settings")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("op_key", sa.String(length=200), nullable=False),
        sa.Column("config_hash", sa.String(length=64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("lease_token", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_jobs_device_id_devices")),
        sa.ForeignKeyConstraint(["op_key"], ["operators.key"], name=op.f("fk_jobs_op_key_operators")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint(
            "device_id",
            "op_key",
            "config_hash",
            "generation",
            name=op.f("uq_jobs_device_id_op_key_config_hash_generation"),
        ),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_claim", ["device_id", "status", "lease_expires_at"], unique=False)

    op.create_table(
        "profiling_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("space_hash", sa.String(length=64), nullable=False),
        sa.Column("space", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(length=64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_profiling_runs_device_id_devices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profiling_runs")),
    )
    with op.batch_alter_table("profiling_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_profiling_runs_device_id"), ["device_id"], unique=False)

    op.create_table(
        "latency_tables",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("space_hash", sa.String(length=64), nullable=False),
        sa.Column("space", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(length=64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("fingerprint", sa.JSON(), nullable=True),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_latency_tables_device_id_devices")),
        sa.ForeignKeyConstraint(
            ["run_id"], ["profiling_runs.id"], name=op.f("fk_latency_tables_run_id_profiling_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_latency_tables")),
        sa.UniqueConstraint("device_id", "version", name=op.f("uq_latency_tables_device_id_version")),
    )
    with op.batch_alter_table("latency_tables", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_latency_tables_space_hash"), ["space_hash"], unique=False)

    op.create_table(
        "measurements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("op_key", sa.String(length=200), nullable=False),
        sa.Column("config_hash", sa.String(length=64), nullable=False),
        sa.Column("median_us", sa.Float(), nullable=False),
        sa.Column("mean_us", sa.Float(), nullable=False),
        sa.Column("p10_us", sa.Float(), nullable=False),
        sa.Column("p90_us", sa.Float(), nullable=False),
        sa.Column("std_us", sa.Float(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("samples_us", sa.JSON(), nullable=True),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_measurements_device_id_devices")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_measurements_job_id_jobs")),
        sa.ForeignKeyConstraint(["op_key"], ["operators.key"], name=op.f("fk_measurements_op_key_operators")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_measurements")),
        sa.UniqueConstraint("job_id", "attempt", name=op.f("uq_measurements_job_id_attempt")),
    )
    with op.batch_alter_table("measurements", schema=None) as batch_op:
        batch_op.create_index("ix_measurements_lookup", ["device_id", "config_hash", "op_key"], unique=False)

    op.create_table(
        "run_operators",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("op_key", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["op_key"], ["operators.key"], name=op.f("fk_run_operators_op_key_operators")),
        sa.ForeignKeyConstraint(["run_id"], ["profiling_runs.id"], name=op.f("fk_run_operators_run_id_profiling_runs")),
        sa.PrimaryKeyConstraint("run_id", "op_key", name=op.f("pk_run_operators")),
    )
    op.create_table(
        "latency_table_entries",
        sa.Column("table_id", sa.Integer(), nullable=False),
        sa.Column("op_key", sa.String(length=200), nullable=False),
        sa.Column("measurement_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["measurement_id"], ["measurements.id"], name=op.f("fk_latency_table_entries_measurement_id_measurements")
        ),
        sa.ForeignKeyConstraint(["op_key"], ["operators.key"], name=op.f("fk_latency_table_entries_op_key_operators")),
        sa.ForeignKeyConstraint(
            ["table_id"], ["latency_tables.id"], name=op.f("fk_latency_table_entries_table_id_latency_tables")
        ),
        sa.PrimaryKeyConstraint("table_id", "op_key", name=op.f("pk_latency_table_entries")),
    )


def downgrade() -> None:
    op.drop_table("latency_table_entries")
    op.drop_table("run_operators")
    with op.batch_alter_table("measurements", schema=None) as batch_op:
        batch_op.drop_index("ix_measurements_lookup")

    op.drop_table("measurements")
    with op.batch_alter_table("latency_tables", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_latency_tables_space_hash"))

    op.drop_table("latency_tables")
    with op.batch_alter_table("profiling_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_profiling_runs_device_id"))

    op.drop_table("profiling_runs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_claim")

    op.drop_table("jobs")
    op.drop_table("service_settings")
    op.drop_table("operators")
    op.drop_table("devices")
    op.drop_table("api_tokens")
