"""profiles count the requests that ended (ok, error or timeout)

A profile's error rate divided its errors and timeouts by every request, refused and
cancelled ones included, where alert rules, rollout guards, ``rollout compare`` and the
shipped Prometheus rule divide by the requests that ended: the report and ``monitor
profiles`` showed a lower rate than an alert on the same hour (15/106 against 15/95).
Profiles computed from now on keep that count; those computed before have none (NULL),
and their rate stays what it was until they are computed again.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07 08:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("monitor_profiles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ended", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("monitor_profiles", schema=None) as batch_op:
        batch_op.drop_column("ended")
