"""A session names the prescribed program it played by library id and version (issue 20,
``SessionRecord.program_library_id`` and ``program_version``), so two versions of one program are
told apart in the API, the exports and the outcomes. Sessions stored before, and those of a
built-in or a file played by hand, have neither.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("session_record") as batch:
        batch.add_column(sa.Column("program_library_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("program_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("session_record") as batch:
        batch.drop_column("program_version")
        batch.drop_column("program_library_id")
