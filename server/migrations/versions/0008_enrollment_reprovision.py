"""Enrollment codes carry the admin's explicit re-provisioning (``EnrollmentRow.reprovision``).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Codes made before it never re-bind a known device id.
    op.add_column(
        "enrollment",
        sa.Column("reprovision", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    # batch: SQLite drops a column by copying the table
    with op.batch_alter_table("enrollment") as batch:
        batch.drop_column("reprovision")
