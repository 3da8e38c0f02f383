"""outbound events: the transactional outbox, subscriptions, deliveries

Revision ID: 0008_events
Revises: 0007_console
Create Date: 2026-11-28 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008_events'
down_revision = '0007_console'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'event_outbox',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('event_id', sa.String(length=64), nullable=False),
        sa.Column('type', sa.String(length=64), nullable=False),
        sa.Column('subject', sa.String(length=255), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_event_outbox')),
        sa.UniqueConstraint('event_id', name=op.f('uq_event_outbox_event_id')),
    )
    with op.batch_alter_table('event_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_event_outbox_undispatched', ['dispatched_at', 'id'], unique=False)
    op.create_table(
        'event_subscriptions',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('url', sa.Text(), nullable=False),
        sa.Column('secret', sa.String(length=128), nullable=False),
        sa.Column('event_types', sa.JSON(), nullable=False),
        sa.Column('metadata_format', sa.String(length=16), nullable=False),
        sa.Column('description', sa.String(length=255), nullable=True),
        sa.Column('active', sa.Boolean(), nullable=False),
        sa.Column('created_by', sa.String(length=255), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_event_subscriptions')),
    )
    op.create_table(
        'event_deliveries',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('event_id', BigId, nullable=False),
        sa.Column('subscription_id', BigId, nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('retry_from', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_status_code', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['event_id'], ['event_outbox.id'], name=op.f('fk_event_deliveries_event_id_event_outbox'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['subscription_id'], ['event_subscriptions.id'],
                                name=op.f('fk_event_deliveries_subscription_id_event_subscriptions'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_event_deliveries')),
        sa.UniqueConstraint('event_id', 'subscription_id', name='uq_event_deliveries_event_subscription'),
    )
    with op.batch_alter_table('event_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_event_deliveries_event_id'), ['event_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_event_deliveries_subscription_id'), ['subscription_id'], unique=False)
        batch_op.create_index('ix_event_deliveries_due', ['status', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('event_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_event_deliveries_due')
        batch_op.drop_index(batch_op.f('ix_event_deliveries_subscription_id'))
        batch_op.drop_index(batch_op.f('ix_event_deliveries_event_id'))
    op.drop_table('event_deliveries')
    op.drop_table('event_subscriptions')
    with op.batch_alter_table('event_outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_event_outbox_undispatched')
    op.drop_table('event_outbox')
