"""The fleet panel's queries and the report's sign-off (issues 25 and 23):

- indexes on ``received_at`` for ``session_record``, ``safety_event`` and ``device_message``: the
  admin's devices page counts the messages stored in the last 15 minutes and hour on every load
  (``fleet_alerts.py``), which without them reads each table whole;
- ``app_user.display_name`` (up to 120 characters, none for users stored before): the name a
  clinician's printed report is signed off with; without one the email stands in.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (index, table) on each table's ``received_at``.
_RECEIVED: tuple[tuple[str, str], ...] = (
    ("ix_session_record_received", "session_record"),
    ("ix_safety_event_received", "safety_event"),
    ("ix_device_message_received", "device_message"),
)


# Plain ALTER TABLE for the column, as 0017: a batch would copy ``app_user`` on SQLite, which the
# tables whose foreign keys name it forbid once users exist.
def upgrade() -> None:
    for index, table in _RECEIVED:
        op.create_index(index, table, ["received_at"])
    op.add_column("app_user", sa.Column("display_name", sa.String(length=120), nullable=True))


def downgrade() -> None:
    op.drop_column("app_user", "display_name")
    for index, table in reversed(_RECEIVED):
        op.drop_index(index, table_name=table)
