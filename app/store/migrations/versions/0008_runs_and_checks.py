"""runs and checks: a reply's code blocks run in the sandbox, and its check against tests

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("runs", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("check", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("check")
        batch_op.drop_column("runs")
