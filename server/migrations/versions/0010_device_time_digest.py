"""Device clocks and reused message ids (issue 26, findings 4 and 5): ``device_state`` keeps the
device's clock skew and when it was measured; the stored device messages keep the digest of their
content, so a message id sent again with other content is told from a resend.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DIGESTED = ("session_record", "safety_event", "device_message")


def upgrade() -> None:
    # Nullable, no default: rows from before have no skew measured and no digest (a resend of
    # one of them is taken as a duplicate, as before).
    op.add_column("device_state", sa.Column("clock_skew_s", sa.Float(), nullable=True))
    op.add_column(
        "device_state", sa.Column("clock_skew_at", sa.DateTime(timezone=True), nullable=True)
    )
    for table in _DIGESTED:
        op.add_column(table, sa.Column("digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    # batch: SQLite drops a column by copying the table
    for table in _DIGESTED:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("digest")
    with op.batch_alter_table("device_state") as batch:
        batch.drop_column("clock_skew_at")
        batch.drop_column("clock_skew_s")
