"""inference records say where a request came from: the API, or a batch job (and which)

``source``: ``api`` (an HTTP request; every record before this migration) or
``batch`` (a row of ``modelyard batch run``); ``job_id``: the batch job, so a
job's records can be counted, and the records of rows a killed job answered but
never wrote to its output can be found and replaced when it resumes. The index
holds only the rows of jobs.

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-12 01:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0010"
branch_labels = None
depends_on = None

_JOBS = sa.text("job_id IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("inference_records", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("source", sa.String(length=16), nullable=False, server_default="api")
        )
        batch_op.add_column(sa.Column("job_id", sa.String(length=64), nullable=True))
    op.create_index(
        "ix_inference_records_job",
        "inference_records",
        ["job_id"],
        unique=False,
        sqlite_where=_JOBS,
        postgresql_where=_JOBS,
    )


def downgrade() -> None:
    op.drop_index("ix_inference_records_job", table_name="inference_records")
    with op.batch_alter_table("inference_records", schema=None) as batch_op:
        batch_op.drop_column("job_id")
        batch_op.drop_column("source")
