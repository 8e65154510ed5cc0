"""Sign-in limits instead of account lockout: failed attempts per address and per account in
``failed_attempt`` (``ratelimit.FailureLimiter``); ``app_user`` loses ``failed_logins`` and
``locked_until``.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "failed_attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=254), nullable=False),
        sa.Column("client", sa.String(length=100), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_failed_attempt_kind_client_at", "failed_attempt", ["kind", "client", "at"])
    op.create_index(
        "ix_failed_attempt_kind_subject_at", "failed_attempt", ["kind", "subject", "at"]
    )
    op.create_index("ix_failed_attempt_at", "failed_attempt", ["at"])
    # Not in batch mode: a batch copies the table, and SQLite (foreign keys on) cannot drop the
    # old app_user under the rows that refer to it; ALTER TABLE ... DROP COLUMN (SQLite 3.35+)
    # drops these plain columns in place.
    op.drop_column("app_user", "failed_logins")
    op.drop_column("app_user", "locked_until")


def downgrade() -> None:
    op.add_column("app_user", sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "app_user", sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0")
    )
    op.drop_index("ix_failed_attempt_at", table_name="failed_attempt")
    op.drop_index("ix_failed_attempt_kind_subject_at", table_name="failed_attempt")
    op.drop_index("ix_failed_attempt_kind_client_at", table_name="failed_attempt")
    op.drop_table("failed_attempt")
