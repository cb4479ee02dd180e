"""profiles are kept per kind of traffic: a shadow version's own profile

A profile counts the requests users sent; the copies mirrored to an endpoint's shadow
version were left out of every profile, so a version that only ever ran as a shadow had
none, and an operator had no hour or day numbers (requests, errors, latency, tokens) of
the candidate to look at before promoting it. Profiles are now computed per endpoint,
version, tenant and kind of traffic: ``shadow`` false is the profile as it was (users'
requests), true the shadow copies' own, shown as such. Profiles stored before are
users' (false), and the hours before the upgrade keep no shadow profile (the monitoring
loop computes hours from its watermark on). A downgrade deletes the shadow profiles
first: without the column they would read as users'.

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-07 17:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("monitor_profiles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("shadow", sa.Boolean(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM monitor_profiles WHERE shadow"))
    with op.batch_alter_table("monitor_profiles", schema=None) as batch_op:
        batch_op.drop_column("shadow")
