"""Enforcement: durable outbox, alert deliveries, DAG pause records (issue 5).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from finops_provider.core.schema import UTCDateTime

revision = "0002"
down_revision = "0001"

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "finops_outbox",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("dedupe_key", sa.String(400), nullable=False, unique=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("lease_until", UTCDateTime()),
        sa.Column("last_error", sa.Text()),
        sa.Column("result", sa.Text()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime()),
    )
    op.create_index("ix_finops_outbox_due", "finops_outbox", ["status", "next_attempt_at"])
    op.create_table(
        "finops_enforcement_event",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("dag_id", sa.String(250)),
        sa.Column("run_id", sa.String(250)),
        sa.Column("task_id", sa.String(250)),
        sa.Column("actor", sa.String(250), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("dedupe_key", sa.String(400)),
        sa.Column("detail", sa.Text()),
    )
    op.create_index("ix_finops_enforcement_event_dag", "finops_enforcement_event", ["dag_id", "at"])
