"""Every version of a library program is kept (``program_version``, never updated): its document,
its checked definition (the program's JSON form, what a prescription carries) and the definition's
SHA-256, who made it and when. The history was not kept before, so each existing program's current
text becomes its version 1 (``program_library.version`` is set to 1 with it), and its
``content_hash`` becomes that definition's SHA-256 (``Program.digest()`` is the canonical JSON's
hash now, issue 20).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
import yaml  # type: ignore[import-untyped,unused-ignore]
from alembic import op

from resonera.common.prescription import definition_sha256
from resonera.common.program import Program

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_library = sa.table(
    "program_library",
    sa.column("id", sa.String),
    sa.column("name", sa.String),
    sa.column("version", sa.Integer),
    sa.column("document", sa.Text),
    sa.column("format", sa.String),
    sa.column("content_hash", sa.String),
    sa.column("updated_by", sa.Integer),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)


def _definition(document: str, fmt: str) -> dict[str, Any]:
    # The documents were checked by the program model when stored; parsed as the server parses them.
    data = yaml.safe_load(document) if fmt == "yaml" else tomllib.loads(document)
    definition: dict[str, Any] = Program.model_validate(data).model_dump(mode="json")
    return definition


def upgrade() -> None:
    versions = op.create_table(
        "program_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("program_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["created_by"], ["app_user.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["program_id"], ["program_library.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("program_id", "version", name="uq_program_version"),
    )
    conn = op.get_bind()
    for row in conn.execute(sa.select(_library)).mappings().all():
        definition = _definition(row["document"], row["format"])
        digest = definition_sha256(definition)
        conn.execute(
            versions.insert().values(
                program_id=row["id"],
                version=1,
                name=row["name"],
                document=row["document"],
                format=row["format"],
                definition=definition,
                sha256=digest,
                created_by=row["updated_by"],
                created_at=row["updated_at"],
            )
        )
        conn.execute(
            _library.update()
            .where(_library.c.id == row["id"])
            .values(version=1, content_hash=digest)
        )


def downgrade() -> None:
    op.drop_table("program_version")
