"""Failed enrollment codes are counted by the sign-ins' limiter (``ratelimit.FailureLimiter``,
kind ``enroll``) in ``failed_attempt``; ``enrollment_attempt`` goes. Failures it held (at most
``enrollment.window_s``, 15 minutes by default) are forgotten.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_enrollment_attempt_client", table_name="enrollment_attempt")
    op.drop_index("ix_enrollment_attempt_serial", table_name="enrollment_attempt")
    op.drop_index("ix_enrollment_attempt_at", table_name="enrollment_attempt")
    op.drop_table("enrollment_attempt")


def downgrade() -> None:
    op.execute("DELETE FROM failed_attempt WHERE kind = 'enroll'")
    op.create_table(
        "enrollment_attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("client", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_enrollment_attempt_at", "enrollment_attempt", ["at"])
    op.create_index("ix_enrollment_attempt_serial", "enrollment_attempt", ["serial"])
    op.create_index("ix_enrollment_attempt_client", "enrollment_attempt", ["client"])
