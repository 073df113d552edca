"""Pull requests: one per incident, numbered per forge.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Migrations keep their own types: the application's may change, a migration must not.
UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pull_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("forge", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("branch", sa.String(length=255), nullable=False),
        sa.Column("base_branch", sa.String(length=255), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("reverted", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("head_sha", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.Column("merged_at", UTC, nullable=True),
        sa.Column("merged_by", sa.String(length=200), nullable=True),
        sa.Column("closed_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"], name="fk_pull_requests_incident_id_incidents"),
        sa.PrimaryKeyConstraint("id", name="pk_pull_requests"),
        # One PR per incident whatever retries happen.
        sa.UniqueConstraint("incident_id", name="uq_pull_requests_incident_id"),
        sa.UniqueConstraint("forge", "number", name="uq_pull_requests_forge"),
    )


def downgrade() -> None:
    op.drop_table("pull_requests")
