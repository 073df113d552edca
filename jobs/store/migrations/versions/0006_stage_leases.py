"""Stage leases: which job runs an incident's stage, renewed by a heartbeat while it runs.

A check reconciles incidents left in flight: one whose lease expired (its worker died) and that no
queued job waits for is resumed at its stage.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: Union[str, Sequence[str], None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "stage_leases",
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"], name="fk_stage_leases_incident_id_incidents"),
        sa.PrimaryKeyConstraint("incident_id", name="pk_stage_leases"),
    )


def downgrade() -> None:
    op.drop_table("stage_leases")
