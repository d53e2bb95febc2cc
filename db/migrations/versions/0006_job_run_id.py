"""jobs.run_id: the run a job was queued for, as a column, not parsed out of its batch group `run:{id}`

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 15:00:00.000000

Jobs queued by a run carried the run only in their batch group, the string `run:{id}`, which readers built
and parsed again (and one query joined on a cast). The backfill reads it from that string once: exactly the
groups `'run:' || id` of an existing run, so a group of any other shape is never cast, and a group naming no
run is left without one. Network jobs (`net:...` sets, single networks) have no run.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_jobs_run_id_profiling_runs"), "profiling_runs", ["run_id"], ["id"])
        batch_op.create_index(batch_op.f("ix_jobs_run_id"), ["run_id"], unique=False)
    op.execute(
        "UPDATE jobs SET run_id = CAST(SUBSTR(batch_group, 5) AS INTEGER) "
        "WHERE batch_group IN (SELECT 'run:' || id FROM profiling_runs)"
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_run_id"))
        batch_op.drop_constraint(batch_op.f("fk_jobs_run_id_profiling_runs"), type_="foreignkey")
        batch_op.drop_column("run_id")
