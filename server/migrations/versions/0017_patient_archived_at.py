"""Patients can be archived (issue 23: an admin archives a patient whose treatment is over):
``patient.archived_at``, when it was done, none for a patient in care. Nothing else changes: an
archived patient keeps every row. Patients stored before are in care (NULL).

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE, not a batch (as 0015): a batch copies ``patient`` on SQLite, and the tables
# whose foreign keys name it would fail once patients exist. Both databases add (and, SQLite
# 3.35 on, drop) a nullable column in place.
def upgrade() -> None:
    op.add_column("patient", sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("patient", "archived_at")
