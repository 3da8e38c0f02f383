"""prepared classifier input: the key of the grey JPEG pixels decoded at ingest for the inference worker

Revision ID: 0009_prepared_input
Revises: 0008_events
Create Date: 2026-12-02 02:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009_prepared_input'
down_revision = '0008_events'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('input_key', sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_column('input_key')
