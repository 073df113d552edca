"""Observations keep their counts and the band they were judged against.

The count (rows in the window, a rate's denominator) sets the sampling noise of the next
forecasts; the band (expected, lower, upper) is drawn day by day in the incident's chart.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

COLUMNS = (("count", sa.BigInteger()), ("expected", sa.Float()), ("lower", sa.Float()), ("upper", sa.Float()))


def upgrade() -> None:
    with op.batch_alter_table("observations") as batch:
        for name, kind in COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("observations") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
