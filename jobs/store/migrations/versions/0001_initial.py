"""Initial schema: observations, incidents, audit events, rebaselines, org state.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Migrations keep their own types: the application's may change, a migration must not.
UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "observations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("contract_id", sa.String(length=200), nullable=False),
        sa.Column("observed_at", UTC, nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("window_start", UTC, nullable=True),
        sa.Column("window_end", UTC, nullable=True),
        sa.Column("sha", sa.String(length=64), nullable=True),
        sa.Column("profile", sa.JSON(), nullable=True),
        sa.Column("backfilled", sa.Boolean(), nullable=False),
        sa.Column("anomalous", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_observations"),
    )
    op.create_index("ix_observations_contract_id_window_start", "observations", ["contract_id", "window_start"])
    op.create_index("ix_observations_contract_id_observed_at", "observations", ["contract_id", "observed_at"])

    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("contract_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=False),
        sa.Column("severity", sa.String(length=32), nullable=False),
        sa.Column("detected_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.Column("resolved_at", UTC, nullable=True),
        sa.Column("first_bad_at", UTC, nullable=False),
        sa.Column("first_bad_sha", sa.String(length=64), nullable=True),
        sa.Column("last_good_at", UTC, nullable=True),
        sa.Column("last_good_sha", sa.String(length=64), nullable=True),
        sa.Column("first_bad_observation_id", sa.Integer(), nullable=True),
        sa.Column("last_good_observation_id", sa.Integer(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("baseline", sa.JSON(), nullable=True),
        sa.Column("change_pct", sa.Float(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["first_bad_observation_id"],
            ["observations.id"],
            name="fk_incidents_first_bad_observation_id_observations",
        ),
        sa.ForeignKeyConstraint(
            ["last_good_observation_id"],
            ["observations.id"],
            name="fk_incidents_last_good_observation_id_observations",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_incidents"),
    )
    op.create_index("ix_incidents_status", "incidents", ["status"])
    # At most one open incident per contract, held by the database even when workers race.
    op.create_index(
        "uq_incidents_one_open_per_contract",
        "incidents",
        ["contract_id"],
        unique=True,
        sqlite_where=sa.text("open"),
        postgresql_where=sa.text("open"),
    )

    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", UTC, nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("dedup_key", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"], name="fk_audit_events_incident_id_incidents"),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
        sa.UniqueConstraint("dedup_key", name="uq_audit_events_dedup_key"),
    )
    op.create_index("ix_audit_events_incident_id", "audit_events", ["incident_id"])

    op.create_table(
        "rebaselines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("contract_id", sa.String(length=200), nullable=False),
        sa.Column("since", UTC, nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rebaselines"),
    )
    op.create_index("ix_rebaselines_contract_id", "rebaselines", ["contract_id"])

    op.create_table(
        "org_state",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.Column("updated_at", UTC, nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_org_state"),
    )


def downgrade() -> None:
    op.drop_table("org_state")
    op.drop_table("rebaselines")
    op.drop_table("audit_events")
    op.drop_table("incidents")
    op.drop_table("observations")
