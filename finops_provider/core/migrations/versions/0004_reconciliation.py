"""Reconciliation: run-time estimates superseded by billed truth, estimate errors (issue 4).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from finops_provider.core.schema import ExactDecimal, UTCDateTime

revision = "0004"
down_revision = "0003"

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "finops_estimate_reconciliation",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("natural_key", sa.String(80), nullable=False, unique=True),
        sa.Column("line_item_id", sa.Text()),
        sa.Column("platform", sa.String(100), nullable=False),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("task_id", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("charge_period_start", UTCDateTime(), nullable=False),
        sa.Column("billing_currency", sa.String(3), nullable=False),
        sa.Column("estimate", ExactDecimal(), nullable=False),
        sa.Column("task_estimate", ExactDecimal(), nullable=False),
        sa.Column("truth", ExactDecimal()),
        sa.Column("error_pct", ExactDecimal()),
        sa.Column("truth_rows", sa.Integer(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("reconciled_at", UTCDateTime(), nullable=False),
    )
    op.create_index(
        "ix_finops_estimate_reconciliation_task", "finops_estimate_reconciliation", ["dag_id", "run_id", "task_id"]
    )
