"""mapping versions

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa
import bridge.db


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mapping_versions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('created_at', bridge.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('author', sa.String(length=255), nullable=False),
    sa.Column('action', sa.String(length=20), nullable=False),
    sa.Column('restored_from', sa.Integer(), nullable=True),
    sa.Column('etag', sa.String(length=40), nullable=False),
    sa.Column('mapping_version', sa.String(length=32), nullable=True),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('diff', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', 'number', name='uq_mapping_versions_number')
    )


def downgrade() -> None:
    op.drop_table('mapping_versions')
