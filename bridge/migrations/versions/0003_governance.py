"""governance: quorum approvals, API keys made with `hitl-bridge keys`, purgeable audit content

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa
import bridge.db


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('review_approvals',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('review_id', sa.String(length=48), nullable=False),
    sa.Column('person_key', sa.String(length=255), nullable=False),
    sa.Column('change_ref', sa.String(length=64), nullable=False),
    sa.Column('reviewer', sa.JSON(), nullable=True),
    sa.Column('at', bridge.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['review_id'], ['reviews.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('review_id', 'person_key', name='uq_review_approvals_person')
    )
    with op.batch_alter_table('review_approvals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_review_approvals_review_id'), ['review_id'], unique=False)

    op.create_table('api_keys',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('hash', sa.String(length=80), nullable=False),
    sa.Column('scopes', sa.JSON(), nullable=False),
    sa.Column('created_at', bridge.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=255), nullable=False),
    sa.Column('expires_at', bridge.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', bridge.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('rate_limit_per_minute', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('hash'),
    sa.UniqueConstraint('name')
    )

    op.create_table('audit_content',
    sa.Column('event_id', sa.Integer(), nullable=False),
    sa.Column('review_id', sa.String(length=48), nullable=True),
    sa.Column('salt', sa.String(length=32), nullable=False),
    sa.Column('content', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['audit_events.id'], ),
    sa.PrimaryKeyConstraint('event_id')
    )
    with op.batch_alter_table('audit_content', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_content_review_id'), ['review_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('audit_content', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_content_review_id'))
    op.drop_table('audit_content')
    op.drop_table('api_keys')
    with op.batch_alter_table('review_approvals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_review_approvals_review_id'))
    op.drop_table('review_approvals')
