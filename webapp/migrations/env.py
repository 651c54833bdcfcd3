"""Alembic's environment: migrates the connection webapp.db.upgrade hands it (there is no alembic.ini)."""
from alembic import context

from webapp.db import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through webapp.db.upgrade, which passes the connection to migrate")
# SQLite alters tables only by copying them: batch mode does that for later migrations that change a column.
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
