"""Chat messages: the card and thread replies posted per incident, claimed before posting.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "chat_messages",
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=True),
        sa.Column("ts", sa.String(length=64), nullable=True),
        sa.Column("claim", sa.String(length=64), nullable=True),
        sa.Column("claimed_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"], name="fk_chat_messages_incident_id_incidents"),
        sa.PrimaryKeyConstraint("incident_id", "key", name="pk_chat_messages"),
    )


def downgrade() -> None:
    op.drop_table("chat_messages")
