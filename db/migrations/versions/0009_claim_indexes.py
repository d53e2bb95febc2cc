"""ix_jobs_pending, ix_jobs_pending_group: partial indexes over pending jobs that serve the claim

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 00:00:00.000000

A claim leases a device's oldest pending job and then its group's oldest pending jobs. The indexes it had,
(device_id, status, lease_expires_at) and (device_id, batch_group), hold the done jobs too and give no id order:
with 50,000 jobs queued (bench.load), PostgreSQL walked the primary key past every done and locked row, or
fetched a whole group and sorted it, and the oldest-job query took 131 ms a call under load. These hold only
queued and leased jobs, in id order, so the claim's `ORDER BY id LIMIT n` stops after the rows it takes. The
predicate is written as the claim writes it (profiler_service/queue.py): SQLite uses a partial index only for a
query that carries the same term.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

PENDING = "status IN ('leased', 'queued')"  # db/models.py PENDING_WHERE as of this revision


def upgrade() -> None:
    where = {"postgresql_where": sa.text(PENDING), "sqlite_where": sa.text(PENDING)}
    op.create_index("ix_jobs_pending", "jobs", ["device_id", "id"], unique=False, **where)
    op.create_index("ix_jobs_pending_group", "jobs", ["batch_group", "device_id", "id"], unique=False, **where)


def downgrade() -> None:
    op.drop_index("ix_jobs_pending_group", table_name="jobs")
    op.drop_index("ix_jobs_pending", table_name="jobs")
