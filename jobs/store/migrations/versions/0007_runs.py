"""Production dbt runs and their nodes' results (`cairn ingest`, dbt Cloud webhooks).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: Union[str, Sequence[str], None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("invocation_id", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("cloud_run_id", sa.BigInteger(), nullable=True),
        sa.Column("command", sa.String(length=32), nullable=True),
        sa.Column("dbt_version", sa.String(length=32), nullable=True),
        sa.Column("project", sa.String(length=200), nullable=True),
        sa.Column("generated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("elapsed", sa.Float(), nullable=True),
        sa.Column("sha", sa.String(length=64), nullable=True),
        sa.Column("sha_source", sa.String(length=64), nullable=True),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.UniqueConstraint("invocation_id", name="uq_runs_invocation_id"),
    )
    op.create_index("ix_runs_generated_at", "runs", ["generated_at"])
    op.create_table(
        "run_nodes",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("unique_id", sa.String(length=512), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("resource_type", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("failures", sa.BigInteger(), nullable=True),
        sa.Column("execution_time", sa.Float(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("relation_name", sa.Text(), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("compiled_code", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_run_nodes_run_id_runs"),
        sa.PrimaryKeyConstraint("run_id", "phase", "unique_id", name="pk_run_nodes"),
    )


def downgrade() -> None:
    op.drop_table("run_nodes")
    op.drop_index("ix_runs_generated_at", table_name="runs")
    op.drop_table("runs")
