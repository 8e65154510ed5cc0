"""Agent updates (issue 25, docs/updates.md): the server's side.

- ``agent_bundle``: the bundles admins uploaded (version, SHA-256, size, the signed manifest);
- ``rollout``: staged rollouts of a bundle to a cohort or a share of the fleet, with their pause rule;
- ``device.cohort``: the named group an admin puts a device in;
- ``device_update``: per device, the agent version it runs, the target its desired document carries
  and its latest update report;
- ``update_report``: every update report devices sent (up kind ``update``), once per message, with
  its ``component`` (the agent, or the safety MCU's firmware the bundle carried).

Nothing existing is rewritten: every new column is nullable, every new table starts empty.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _when(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "agent_bundle",
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("min_previous_version", sa.String(length=64), nullable=True),
        sa.Column("uploaded_by", sa.Integer(), nullable=False),
        sa.Column("uploaded_by_email", sa.String(length=254), nullable=False),
        _when("uploaded_at"),
        sa.ForeignKeyConstraint(["uploaded_by"], ["app_user.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("version"),
        sa.UniqueConstraint("sha256"),
    )
    op.create_table(
        "rollout",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("cohort", sa.String(length=64), nullable=True),
        sa.Column("percentage", sa.Integer(), nullable=True),
        sa.Column("failure_threshold", sa.Float(), nullable=False),
        sa.Column("min_failures", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("paused_reason", sa.String(length=500), nullable=True),
        _when("resumed_at", nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=False),
        sa.Column("created_by_email", sa.String(length=254), nullable=False),
        _when("created_at"),
        _when("updated_at"),
        sa.ForeignKeyConstraint(["version"], ["agent_bundle.version"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["created_by"], ["app_user.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rollout_state", "rollout", ["state"])
    op.create_table(
        "device_update",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("agent_version", sa.String(length=64), nullable=True),
        sa.Column("agent_version_seq", sa.Integer(), nullable=False),
        sa.Column("target_rollout", sa.String(length=36), nullable=True),
        sa.Column("target_version", sa.String(length=64), nullable=True),
        sa.Column("report_rollout", sa.String(length=36), nullable=True),
        sa.Column("report_version", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("report_seq", sa.Integer(), nullable=False),
        _when("report_at", nullable=True),
        _when("updated_at"),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_index("ix_device_update_report_rollout", "device_update", ["report_rollout"])
    op.create_table(
        "update_report",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        _when("device_time"),
        _when("received_at"),
        sa.Column("rollout", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("from_version", sa.String(length=64), nullable=False),
        sa.Column("to_version", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("component", sa.String(length=8), nullable=False),
        sa.Column("sig_status", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "message_id", name="uq_update_report_device_message"),
    )
    op.create_index("ix_update_report_device_id", "update_report", ["device_id"])
    op.create_index("ix_update_report_received", "update_report", ["received_at"])
    op.create_index("ix_update_report_rollout_state", "update_report", ["rollout", "state"])
    # Plain ALTER TABLE, as 0017 and 0018: a batch would copy ``device`` on SQLite, which the
    # tables whose foreign keys name it forbid once devices exist.
    op.add_column("device", sa.Column("cohort", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("device", "cohort")
    op.drop_table("update_report")
    op.drop_table("device_update")
    op.drop_table("rollout")
    op.drop_table("agent_bundle")
