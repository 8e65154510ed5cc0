"""Sessions carry underruns; clinician dose-ledger resets.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("session_record", schema=None) as batch_op:
        # sessions stored before devices counted underruns had none reported: 0
        batch_op.add_column(
            sa.Column("underruns", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_table(
        "dose_ledger_reset",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("patient_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("requested_by", sa.Integer(), nullable=False),
        sa.Column("requested_by_email", sa.String(length=254), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["patient_id"], ["patient.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["requested_by"], ["app_user.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("dose_ledger_reset", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dose_ledger_reset_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            "ix_dose_ledger_reset_device_at", ["device_id", "requested_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("dose_ledger_reset", schema=None) as batch_op:
        batch_op.drop_index("ix_dose_ledger_reset_device_at")
        batch_op.drop_index(batch_op.f("ix_dose_ledger_reset_patient_id"))
    op.drop_table("dose_ledger_reset")
    with op.batch_alter_table("session_record", schema=None) as batch_op:
        batch_op.drop_column("underruns")
