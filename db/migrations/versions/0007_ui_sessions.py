"""ui_sessions: dashboard sessions kept by the service, and the signing key they replace removed

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 17:30:00.000000

The dashboard's cookie was an HMAC over the token digest with a key stored in `service_settings`, beside the
token hashes: whoever could read the database could sign a session of their own, and signing out ended
nothing on the server. A session is now a row holding the SHA-256 of the cookie's random secret; the old key
is deleted, so every cookie it signed stops working (those browsers sign in again).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("id_hash", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_ui_sessions")),
    )
    with op.batch_alter_table("ui_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ui_sessions_token_hash"), ["token_hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_ui_sessions_expires_at"), ["expires_at"], unique=False)
    op.execute("DELETE FROM service_settings WHERE name = 'ui_session_key'")


def downgrade() -> None:
    with op.batch_alter_table("ui_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ui_sessions_expires_at"))
        batch_op.drop_index(batch_op.f("ix_ui_sessions_token_hash"))
    op.drop_table("ui_sessions")
