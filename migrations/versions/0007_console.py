"""curator console: human scale readings, browser sessions, curators' subcategory names

Revision ID: 0007_console
Revises: 0006_records
Create Date: 2026-12-01 18:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007_console'
down_revision = '0006_records'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'scale_labels',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('image_id', BigId, nullable=False),
        sa.Column('scale_value', sa.Float(), nullable=False),
        sa.Column('scale_unit', sa.String(length=8), nullable=False),
        sa.Column('bar_px', sa.Float(), nullable=True),
        sa.Column('pixel_size_nm', sa.Float(), nullable=False),
        sa.Column('action', sa.String(length=16), nullable=False),
        sa.Column('labelled_by', sa.String(length=255), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_scale_labels_image_id_images'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_scale_labels')),
    )
    with op.batch_alter_table('scale_labels', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_scale_labels_image_id'), ['image_id'], unique=False)
    op.create_table(
        'ui_sessions',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('token_sha256', sa.String(length=64), nullable=False),
        sa.Column('key_id', BigId, nullable=False),
        sa.Column('csrf_token', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['key_id'], ['api_keys.id'], name=op.f('fk_ui_sessions_key_id_api_keys'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_ui_sessions')),
        sa.UniqueConstraint('token_sha256', name=op.f('uq_ui_sessions_token_sha256')),
    )
    with op.batch_alter_table('ui_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ui_sessions_key_id'), ['key_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ui_sessions_expires_at'), ['expires_at'], unique=False)
    with op.batch_alter_table('subcategories', schema=None) as batch_op:
        batch_op.add_column(sa.Column('named_by', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('named_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('name_inherited_from', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('subcategories', schema=None) as batch_op:
        batch_op.drop_column('name_inherited_from')
        batch_op.drop_column('named_at')
        batch_op.drop_column('named_by')
    with op.batch_alter_table('ui_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ui_sessions_expires_at'))
        batch_op.drop_index(batch_op.f('ix_ui_sessions_key_id'))
    op.drop_table('ui_sessions')
    with op.batch_alter_table('scale_labels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scale_labels_image_id'))
    op.drop_table('scale_labels')
