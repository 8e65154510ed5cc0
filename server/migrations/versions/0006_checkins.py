"""Check-in answers before and after sessions (patient-reported outcomes).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "checkin",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("record_id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("patient_id", sa.String(length=36), nullable=True),
        sa.Column("question_id", sa.String(length=32), nullable=False),
        sa.Column("phase", sa.String(length=8), nullable=False),
        sa.Column("value", sa.Integer(), nullable=True),
        sa.Column("skipped", sa.Boolean(), nullable=False),
        sa.Column("higher_is_better", sa.Boolean(), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "record_id", name="uq_checkin_device_record"),
    )
    # The outcome views read a patient's answers by time from this index alone (covering: rows
    # of one patient are scattered over the table); before/after pairs join on the session.
    op.create_index(
        "ix_checkin_patient_answered",
        "checkin",
        [
            "patient_id",
            "answered_at",
            "session_id",
            "question_id",
            "phase",
            "value",
            "higher_is_better",
            "skipped",
        ],
    )
    op.create_index("ix_checkin_session", "checkin", ["session_id"])


def downgrade() -> None:
    op.drop_index("ix_checkin_session", table_name="checkin")
    op.drop_index("ix_checkin_patient_answered", table_name="checkin")
    op.drop_table("checkin")
