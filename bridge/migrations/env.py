"""Alembic environment: the URL comes from the caller (``bridge.migrate``), never a file."""

from alembic import context
from sqlalchemy import create_engine, text

from bridge.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")
MIGRATION_LOCK = 0x68697474  # several instances starting at once migrate one at a time


def _serialise(connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})


def run() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            _serialise(connectable)
            context.run_migrations()
        return
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            _serialise(connection)
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run()
