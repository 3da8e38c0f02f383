"""records as the repository has them: image ↔ record (with version) links, the deletion audit trail

Moves every images.record_id into image_records (version ''), then drops the column. On SQLite the
images table is rebuilt with AUTOINCREMENT, so that the id of an erased image is never reused.

Revision ID: 0006_records
Revises: 0005
Create Date: 2026-11-27 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006_records'
down_revision = '0005'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'image_records',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('image_id', BigId, nullable=False),
        sa.Column('record_id', sa.String(length=255), nullable=False),
        sa.Column('record_version', sa.String(length=64), server_default='', nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_image_records_image_id_images'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_image_records')),
        sa.UniqueConstraint('image_id', 'record_id', 'record_version', name='uq_image_records_link'),
    )
    with op.batch_alter_table('image_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_image_records_image_id'), ['image_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_image_records_record_id'), ['record_id'], unique=False)
    op.create_table(
        'deletions',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('target', sa.String(length=255), nullable=False),
        sa.Column('record_version', sa.String(length=64), nullable=True),
        sa.Column('deleted_by', sa.String(length=255), nullable=False),
        sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('detail', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_deletions')),
    )
    with op.batch_alter_table('deletions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deletions_deleted_at'), ['deleted_at'], unique=False)

    op.execute("INSERT INTO image_records (image_id, record_id, record_version, created_at) "
               "SELECT id, record_id, '', created_at FROM images WHERE record_id IS NOT NULL")

    sqlite = op.get_bind().dialect.name == 'sqlite'
    # recreate='always' on SQLite: the table is rebuilt, with AUTOINCREMENT (ids never reused)
    with op.batch_alter_table('images', schema=None, recreate='always' if sqlite else 'auto',
                              table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.drop_index(batch_op.f('ix_images_record_id'))
        batch_op.drop_column('record_id')


def downgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('record_id', sa.String(length=255), nullable=True))
        batch_op.create_index(batch_op.f('ix_images_record_id'), ['record_id'], unique=False)
    # one record per image before this revision: keep the first one it was linked to
    op.execute("UPDATE images SET record_id = (SELECT r.record_id FROM image_records r WHERE r.image_id = images.id "
               "ORDER BY r.id LIMIT 1)")
    with op.batch_alter_table('deletions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deletions_deleted_at'))
    op.drop_table('deletions')
    with op.batch_alter_table('image_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_image_records_record_id'))
        batch_op.drop_index(batch_op.f('ix_image_records_image_id'))
    op.drop_table('image_records')
