"""message tree: user messages get a parent, conversations the leaf of the branch on screen

Revision ID: 0004
Revises: 0003

Each user message's ``reply_to_id`` becomes the reply it follows: the newest reply to the
previous user message of its conversation (id order; the newest before the message, so that a
parent is always older than its child), or that message itself when it has no reply; a first
message has none. ``leaf_id`` starts empty, which reads as "the newest child at
each step": the branch the page showed before, each message with the latest version of its
reply.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

BATCH = 1000


def upgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("leaf_id", sa.Integer(), nullable=True))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_messages_reply_to_id"), ["reply_to_id"], unique=False)

    messages = sa.table(
        "messages", sa.column("id", sa.Integer()), sa.column("conversation_id", sa.String()),
        sa.column("role", sa.String()), sa.column("reply_to_id", sa.Integer()),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(messages.c.id, messages.c.conversation_id, messages.c.role,
                  messages.c.reply_to_id)
        .order_by(messages.c.conversation_id, messages.c.id)
    ).all()
    parents: list[dict[str, int]] = []
    conversation: str | None = None
    last_user: int | None = None
    newest_reply: int | None = None
    for message_id, conversation_id, role, reply_to_id in rows:
        if conversation_id != conversation:
            conversation, last_user, newest_reply = conversation_id, None, None
        if role == "user":
            parent = newest_reply if newest_reply is not None else last_user
            if parent is not None:
                parents.append({"message": message_id, "parent": parent})
            last_user, newest_reply = message_id, None
        elif reply_to_id is not None and reply_to_id == last_user:
            newest_reply = message_id
    update = (
        sa.update(messages).where(messages.c.id == sa.bindparam("message"))
        .values(reply_to_id=sa.bindparam("parent"))
    )
    for start in range(0, len(parents), BATCH):
        bind.execute(update, parents[start:start + BATCH])


def downgrade() -> None:
    messages = sa.table(
        "messages", sa.column("role", sa.String()), sa.column("reply_to_id", sa.Integer())
    )
    op.execute(sa.update(messages).where(messages.c.role == "user").values(reply_to_id=None))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_reply_to_id"))
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_column("leaf_id")
