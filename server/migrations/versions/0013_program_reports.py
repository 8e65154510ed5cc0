"""What devices report about prescriptions (issue 20): ``program_report``, each prescribed program's
outcome (applied, or refused and why) per device and desired-state version; on ``device_state``
the latest report whatever its status (``report_*``) and the engine's capabilities the device
reported last (``capabilities``, with the seq that brought them).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "program_report",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("desired_version", sa.Integer(), nullable=False),
        sa.Column("library_id", sa.String(length=64), nullable=False),
        sa.Column("program_version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "desired_version", "library_id"),
    )
    with op.batch_alter_table("device_state") as batch:
        batch.add_column(sa.Column("report_seq", sa.Integer(), nullable=False, server_default="-1"))
        batch.add_column(sa.Column("report_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("report_status", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("report_reason", sa.String(length=500), nullable=True))
        batch.add_column(sa.Column("capabilities", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column("capabilities_seq", sa.Integer(), nullable=False, server_default="-1")
        )


def downgrade() -> None:
    with op.batch_alter_table("device_state") as batch:
        for name in (
            "capabilities_seq",
            "capabilities",
            "report_reason",
            "report_status",
            "report_version",
            "report_seq",
        ):
            batch.drop_column(name)
    op.drop_table("program_report")
