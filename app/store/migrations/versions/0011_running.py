"""running: the places held among each user's running replies, shared by every process on
the database; each goes with its process's lease

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    op.create_table(
        "running",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("lease_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["lease_id"], ["leases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_running_user_id", "running", ["user_id"])
    op.create_index("ix_running_lease_id", "running", ["lease_id"])


def downgrade() -> None:
    op.drop_index("ix_running_lease_id", table_name="running")
    op.drop_index("ix_running_user_id", table_name="running")
    op.drop_table("running")
