"""record features carry their record's endpoint, version, status, time and numbers

Drift reads every feature of a window of records; with these columns and one
covering index that is a single index range scan, with no join to
inference_records.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 02:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_COPIED = (
    ("endpoint_name", sa.String(length=100)),
    ("version_id", sa.Integer()),
    ("status", sa.String(length=16)),
    ("created_at", sa.DateTime(timezone=True)),
    ("prompt_tokens", sa.Integer()),
    ("completion_tokens", sa.Integer()),
    ("latency_ms", sa.Float()),
)
_INDEX = (
    "endpoint_name",
    "version_id",
    "status",
    "created_at",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "prompt_chars",
    "response_chars",
    "prompt_non_ascii",
    "prompt_digits",
    "response_non_ascii",
    "response_digits",
    "unknown_token_rate",
)


def upgrade() -> None:
    with op.batch_alter_table("record_features", schema=None) as batch_op:
        for name, type_ in _COPIED:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
    # Rows written before this revision: copy the values from their records.
    for name, _ in _COPIED:
        op.execute(
            f"UPDATE record_features SET {name} = (SELECT r.{name} FROM inference_records r "
            "WHERE r.id = record_features.record_id)"
        )
    with op.batch_alter_table("record_features", schema=None) as batch_op:
        batch_op.create_index("ix_record_features_window", list(_INDEX), unique=False)


def downgrade() -> None:
    with op.batch_alter_table("record_features", schema=None) as batch_op:
        batch_op.drop_index("ix_record_features_window")
        for name, _ in reversed(_COPIED):
            batch_op.drop_column(name)
