"""batch leases, interleaved rounds, prediction rule

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 02:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("agent_protocol", sa.Integer(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_group", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_jobs_batch", ["device_id", "batch_group"], unique=False)
    with op.batch_alter_table("measurements", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rounds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("round_medians_us", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("estimator", sa.String(length=100), nullable=True))
    with op.batch_alter_table("latency_tables", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prediction", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("latency_tables", schema=None) as batch_op:
        batch_op.drop_column("prediction")
    with op.batch_alter_table("measurements", schema=None) as batch_op:
        batch_op.drop_column("estimator")
        batch_op.drop_column("round_medians_us")
        batch_op.drop_column("rounds")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_batch")
        batch_op.drop_column("batch_group")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("agent_protocol")
