"""devices.agent_problem: why the device's agent cannot work now, as the agent last said, for the dashboard

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 17:30:00.000000

A fleet worker whose device or service call fails (a phone unplugged or not authorised, a refused lease, an
answer that is not JSON) retries with backoff; it says why on `PUT /v1/agent/status`, and the device's page
shows it until the agent's next fingerprint. Before, such a worker died and the dashboard only showed "not seen".
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("agent_problem", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("agent_problem")
