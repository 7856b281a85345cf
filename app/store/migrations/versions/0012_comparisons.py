"""comparisons: one message to two models side by side, and the user's vote between them

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"

INDEXED = ("user_id", "conversation_id", "left_reply_id", "right_reply_id")


def upgrade() -> None:
    op.create_table(
        "comparisons",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.String(length=32), nullable=True),
        sa.Column("left_reply_id", sa.Integer(), nullable=True),
        sa.Column("right_reply_id", sa.Integer(), nullable=True),
        sa.Column("left_model", sa.String(length=200), nullable=False),
        sa.Column("right_model", sa.String(length=200), nullable=False),
        sa.Column("left_backend", sa.String(length=50), nullable=True),
        sa.Column("right_backend", sa.String(length=50), nullable=True),
        sa.Column("left_first_token_ms", sa.Float(), nullable=True),
        sa.Column("right_first_token_ms", sa.Float(), nullable=True),
        sa.Column("left_tokens_per_second", sa.Float(), nullable=True),
        sa.Column("right_tokens_per_second", sa.Float(), nullable=True),
        sa.Column("blind", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.Column("voted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["left_reply_id"], ["messages.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["right_reply_id"], ["messages.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in INDEXED:
        op.create_index(f"ix_comparisons_{column}", "comparisons", [column])


def downgrade() -> None:
    for column in reversed(INDEXED):
        op.drop_index(f"ix_comparisons_{column}", table_name="comparisons")
    op.drop_table("comparisons")
