"""Alembic environment: migrates the connection ``resonera.server.db`` hands over (online only)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

from resonera.server import models  # noqa: F401  (registers the tables in SQLModel.metadata)

config = context.config
connection = config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run migrations with `resonera-server migrate`, not the alembic command")
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
