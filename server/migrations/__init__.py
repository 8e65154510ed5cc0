"""Alembic migrations of the server's database, run with ``resonera-server migrate`` (see ``db.py``)."""
