"""limits: the events counted against the message rate and the login throttle, shared by
every process on the database

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.create_table(
        "limit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_limit_events_kind_key_until", "limit_events", ["kind", "key", "until"])
    op.create_index("ix_limit_events_until", "limit_events", ["until"])


def downgrade() -> None:
    op.drop_index("ix_limit_events_until", table_name="limit_events")
    op.drop_index("ix_limit_events_kind_key_until", table_name="limit_events")
    op.drop_table("limit_events")
