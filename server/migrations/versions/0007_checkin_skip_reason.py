"""Why a check-in was skipped (``CheckInRecord.skip_reason``), as the device sends it.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: rows from before it (and answered check-ins) have no reason.
    op.add_column("checkin", sa.Column("skip_reason", sa.String(length=200), nullable=True))


def downgrade() -> None:
    # batch: SQLite drops a column by copying the table
    with op.batch_alter_table("checkin") as batch:
        batch.drop_column("skip_reason")
