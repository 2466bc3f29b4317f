"""jobs wake the workers from a trigger (PostgreSQL only; additive: a function and a trigger)

A pending job's INSERT sends NOTIFY on the workers' channel (bridge/wakeups.py) from the
database itself, instead of a ``SELECT pg_notify(...)`` after every enqueue: one round trip
less in every transaction that queues a job (intake, bench/README.md). An older version
still notifies itself during a deploy: notifications in one transaction arrive as one.

Revision ID: 0005
Revises: 0004
"""
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("""
        CREATE OR REPLACE FUNCTION hitl_bridge_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('hitl_bridge_jobs', '');
            RETURN NULL;
        END $$
    """)
    op.execute("""
        CREATE TRIGGER hitl_bridge_jobs_notify AFTER INSERT ON jobs
        FOR EACH ROW WHEN (NEW.state = 'pending') EXECUTE FUNCTION hitl_bridge_notify_jobs()
    """)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS hitl_bridge_jobs_notify ON jobs")
    op.execute("DROP FUNCTION IF EXISTS hitl_bridge_notify_jobs()")
