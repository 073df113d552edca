"""Incidents can follow an open one, and can form a group behind one culprit.

A new deploy that makes an open incident's contract worse opens an incident of its own that
follows the open one (its own suspect commits, verification and PR), so the database now holds
one open incident per contract that follows nothing, and at most one open follower per incident.
Incidents that one culprit caused on several contracts share a group (its leader's ID).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("follows_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("group_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_incidents_follows_id_incidents", "incidents", ["follows_id"], ["id"])
    op.drop_index("uq_incidents_one_open_per_contract", table_name="incidents")
    op.create_index("uq_incidents_one_open_root_per_contract", "incidents", ["contract_id"], unique=True,
                    sqlite_where=sa.text("open AND follows_id IS NULL"),
                    postgresql_where=sa.text("open AND follows_id IS NULL"))
    op.create_index("uq_incidents_one_open_follower", "incidents", ["follows_id"], unique=True,
                    sqlite_where=sa.text("open AND follows_id IS NOT NULL"),
                    postgresql_where=sa.text("open AND follows_id IS NOT NULL"))
    op.create_index("ix_incidents_group_id", "incidents", ["group_id"])


def downgrade() -> None:
    op.drop_index("ix_incidents_group_id", table_name="incidents")
    op.drop_index("uq_incidents_one_open_follower", table_name="incidents")
    op.drop_index("uq_incidents_one_open_root_per_contract", table_name="incidents")
    op.create_index("uq_incidents_one_open_per_contract", "incidents", ["contract_id"], unique=True,
                    sqlite_where=sa.text("open"), postgresql_where=sa.text("open"))
    with op.batch_alter_table("incidents") as batch:
        batch.drop_constraint("fk_incidents_follows_id_incidents", type_="foreignkey")
        batch.drop_column("group_id")
        batch.drop_column("follows_id")
