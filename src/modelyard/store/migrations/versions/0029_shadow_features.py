"""record features say whether their record is a shadow copy: drift reads users' requests

Drift reads a version's features on an endpoint from ``record_features`` alone (0007: one
range scan of a covering index, no join). A version both in the plan and the endpoint's
shadow answers its users' requests and copies of the other versions' requests, and the
copies' features were read with the users': their latency and answers made the version
drift though nothing its users sent or got had changed. Features now carry their
record's ``shadow`` (copied here from the records for the rows written before), and the
index holds it before the time, so a drift window is still one range scan, of the users'
requests only.

Features written by replicas of an older release while this one is applied say false:
a shadow copy they record counts in drift as it did before, until they are replaced.

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-07 17:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None

_INDEX_BEFORE = (
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
_INDEX = (*_INDEX_BEFORE[:3], "shadow", *_INDEX_BEFORE[3:])


def upgrade() -> None:
    with op.batch_alter_table("record_features", schema=None) as batch_op:
        batch_op.add_column(sa.Column("shadow", sa.Boolean(), nullable=False, server_default="0"))
    # The features of the shadow copies recorded before: their records say so.
    op.execute(
        sa.text(
            "UPDATE record_features SET shadow = :yes WHERE record_id IN "
            "(SELECT id FROM inference_records WHERE shadow = :yes)"
        ).bindparams(yes=True)
    )
    with op.batch_alter_table("record_features", schema=None) as batch_op:
        batch_op.drop_index("ix_record_features_window")
        batch_op.create_index("ix_record_features_window", list(_INDEX), unique=False)


def downgrade() -> None:
    with op.batch_alter_table("record_features", schema=None) as batch_op:
        batch_op.drop_index("ix_record_features_window")
        batch_op.create_index("ix_record_features_window", list(_INDEX_BEFORE), unique=False)
        batch_op.drop_column("shadow")
