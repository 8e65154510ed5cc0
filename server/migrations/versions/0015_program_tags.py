"""Library programs have tags (issue 20: the clinician finds a program by name or tag): a JSON list
of normalised words on ``program_library``, not versioned (they describe the entry, not the
sound). Programs stored before have none: the server default fills them with an empty list.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE, not a batch: on SQLite a batch copies the table, and dropping the old
# ``program_library`` fails the foreign keys of ``program_version`` once programs exist. Both
# databases add (and, SQLite 3.35 on, drop) a column in place.
def upgrade() -> None:
    op.add_column(
        "program_library",
        sa.Column("tags", sa.JSON(), nullable=False, server_default=sa.text("'[]'")),
    )


def downgrade() -> None:
    op.drop_column("program_library", "tags")
