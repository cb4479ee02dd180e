"""drift runs say whether the monitoring tick made them

Alerts, the drift gauges and the report read each endpoint's latest drift run. A run
someone made by hand (``monitor drift`` with another reference or window, to look
around) then replaced the one the rules file's ``drift:`` section schedules: it could
resolve a firing drift alert, and the tick skipped its own next run. The tick's runs
are now marked, and preferred where an endpoint has any. Runs stored before are not
marked: until the tick's next run, the latest of any kind is read, as before.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 08:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("drift_results", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("scheduled", sa.Boolean(), nullable=False, server_default="0")
        )
    # each endpoint's last run of the tick's, and of any kind, read on it
    op.create_index(
        "ix_drift_results_endpoint_scheduled",
        "drift_results",
        ["endpoint_name", "scheduled", "computed_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_drift_results_endpoint_scheduled", table_name="drift_results")
    with op.batch_alter_table("drift_results", schema=None) as batch_op:
        batch_op.drop_column("scheduled")
