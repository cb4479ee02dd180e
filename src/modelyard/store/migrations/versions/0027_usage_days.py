"""token usage per tenant, key, version and day: ``usage_days``

Budgets' spend was summed from the month's inference records on every read (3.4 s
for ``GET /budgets`` at 1.5 million records), and it dropped when a retention purge
deleted records: a server that seeded its totals after a purge gave the tenant its
money back. The record paths now keep each day's tokens here (``store/_usage.py``);
this revision fills the table from the records there are.

Records written by replicas of an older release while this one is applied are not
counted: ``modelyard budgets recount --since <the upgrade's day>`` counts them once the
older replicas are gone (docs/operations.md).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07 16:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_days",
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_usage_days_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name=op.f("fk_usage_days_version_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint(
            "day", "tenant_id", "key_id", "version_id", name=op.f("pk_usage_days")
        ),
    )
    op.create_index("ix_usage_days_tenant_day", "usage_days", ["tenant_id", "day"])
    if op.get_bind().dialect.name == "postgresql":
        day = "date_trunc('day', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        not_shadow = "shadow = false"
    else:  # SQLite keeps a datetime as 'YYYY-MM-DD HH:MM:SS.ffffff', in UTC
        day = "substr(created_at, 1, 10) || ' 00:00:00.000000'"
        not_shadow = "shadow = 0"
    # as store/_usage.py counts: ended requests users sent, of a known tenant and version
    op.execute(
        "INSERT INTO usage_days (day, tenant_id, key_id, version_id, requests, "
        "prompt_tokens, completion_tokens) "
        f"SELECT {day}, tenant_id, coalesce(api_key_id, ''), version_id, count(*), "
        "coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0) "
        "FROM inference_records WHERE tenant_id IS NOT NULL AND version_id IS NOT NULL "
        f"AND status <> 'running' AND {not_shadow} "
        f"GROUP BY {day}, tenant_id, coalesce(api_key_id, ''), version_id"
    )


def downgrade() -> None:
    op.drop_table("usage_days")
