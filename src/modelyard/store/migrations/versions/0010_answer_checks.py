"""inference records say what a constrained or tool-offering answer did; profiles count it

``tool_calls``: the calls an answer made when tools were offered (NULL: none were).
``format_ok``: whether an answer that had to be JSON (``response_format``,
``text.format``) or a call (``tool_choice`` required or named) came out as one
(NULL: nothing was asked; false: cut short by ``max_tokens``, say). The profiles
sum the calls and count the checked answers and their failures.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 01:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_PROFILE_COUNTS = ("tool_calls", "format_checked", "format_failures")


def upgrade() -> None:
    with op.batch_alter_table("inference_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tool_calls", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("format_ok", sa.Boolean(), nullable=True))
    with op.batch_alter_table("monitor_profiles", schema=None) as batch_op:
        for name in _PROFILE_COUNTS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("monitor_profiles", schema=None) as batch_op:
        for name in _PROFILE_COUNTS:
            batch_op.drop_column(name)
    with op.batch_alter_table("inference_records", schema=None) as batch_op:
        batch_op.drop_column("format_ok")
        batch_op.drop_column("tool_calls")
