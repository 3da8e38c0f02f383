"""one active model per task (partial unique index)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 20:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('uq_models_one_active', 'models', ['task'], unique=True,
                    postgresql_where=sa.text('active'), sqlite_where=sa.text('active'))


def downgrade() -> None:
    op.drop_index('uq_models_one_active', table_name='models')
