"""an alert's notifications are found by its id

The evaluator reads, at each evaluation and for every firing alert, whether its
last delivery to the webhook failed (``Store.last_deliveries``). Without an index
on ``alert_id`` that read every notification ever kept, once per alert.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 14:50:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_alert_notifications_alert", "alert_notifications", ["alert_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_alert_notifications_alert", table_name="alert_notifications")
