"""run states stored (failed, cancelled, with a reason), table payloads stored with their ETag

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 06:00:00.000000

Runs that the old code reported as failed only on read stay `running` here; the service's sweep stores
them as `failed` on its first pass, with the same rule. Tables published before this revision get their
payload on their first read (the device's name as it is then).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("profiling_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f("ix_profiling_runs_status"), ["status"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_expiry", ["status", "lease_expires_at"], unique=False)
    with op.batch_alter_table("latency_tables", schema=None) as batch_op:
        batch_op.add_column(sa.Column("payload", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("payload_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    # Cancelled runs and cancelled jobs have no meaning before 0004: they read as failed.
    op.execute("UPDATE profiling_runs SET status = 'failed' WHERE status = 'cancelled'")
    op.execute("UPDATE jobs SET status = 'failed' WHERE status = 'cancelled'")
    with op.batch_alter_table("latency_tables", schema=None) as batch_op:
        batch_op.drop_column("payload_sha256")
        batch_op.drop_column("payload")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_expiry")
    with op.batch_alter_table("profiling_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_profiling_runs_status"))
        batch_op.drop_column("reason")
