"""kept settings: each conversation's settings cleaned as they are now cleaned when written

Settings used to be stored as sent and cleaned at every read; now they are cleaned once, as
they are written (``app.store.models.kept_settings``), and read as they are. This cleans those
stored before. There is nothing to undo: the settings left out were never used.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from app.store.models import kept_settings

revision = "0007"
down_revision = "0006"

conversations = sa.table(
    "conversations", sa.column("id", sa.String), sa.column("settings", sa.JSON)
)


def upgrade() -> None:
    connection = op.get_bind()
    for conversation_id, settings in connection.execute(
        sa.select(conversations.c.id, conversations.c.settings)
    ):
        kept = kept_settings(settings) if isinstance(settings, dict) else {}
        if kept != settings:
            connection.execute(
                conversations.update().where(conversations.c.id == conversation_id)
                .values(settings=kept)
            )


def downgrade() -> None:
    pass
