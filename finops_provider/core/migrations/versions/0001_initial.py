"""Initial ledger schema: cost lines, audit, ingest batches, quarantine, breach claims.

This file is a frozen snapshot: later schema changes go into new revisions, never here.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from finops_provider.core.schema import ExactDecimal, UTCDateTime

revision = "0001"
down_revision = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

#: The cost-record columns as of revision 0001 (attribute name, kind).
_COST_COLUMNS = (
    ("billed_cost", "money"),
    ("effective_cost", "money"),
    ("list_cost", "money"),
    ("contracted_cost", "money"),
    ("billing_account_id", "text"),
    ("billing_account_name", "text"),
    ("billing_currency", "text"),
    ("billing_period_start", "time"),
    ("billing_period_end", "time"),
    ("charge_category", "text"),
    ("charge_class", "text"),
    ("charge_description", "text"),
    ("charge_period_start", "time"),
    ("charge_period_end", "time"),
    ("invoice_issuer_name", "text"),
    ("pricing_quantity", "decimal"),
    ("pricing_unit", "text"),
    ("provider_name", "text"),
    ("publisher_name", "text"),
    ("service_category", "text"),
    ("service_name", "text"),
    ("availability_zone", "text"),
    ("charge_frequency", "text"),
    ("commitment_discount_category", "text"),
    ("commitment_discount_id", "text"),
    ("commitment_discount_name", "text"),
    ("commitment_discount_status", "text"),
    ("commitment_discount_type", "text"),
    ("consumed_quantity", "decimal"),
    ("consumed_unit", "text"),
    ("contracted_unit_price", "decimal"),
    ("invoice_id", "text"),
    ("list_unit_price", "decimal"),
    ("pricing_category", "text"),
    ("region_id", "text"),
    ("region_name", "text"),
    ("resource_id", "text"),
    ("resource_name", "text"),
    ("resource_type", "text"),
    ("service_subcategory", "text"),
    ("sku_id", "text"),
    ("sku_price_id", "text"),
    ("sub_account_id", "text"),
    ("sub_account_name", "text"),
    ("tags", "tags"),
    ("x_line_item_id", "text"),
    ("x_source", "text"),
    ("x_platform", "text"),
    ("x_cost_kind", "text"),
    ("x_provisional", "bool"),
    ("x_dag_id", "text"),
    ("x_task_id", "text"),
    ("x_run_id", "text"),
    ("x_job_id", "text"),
    ("x_asset", "text"),
    ("x_team", "text"),
    ("x_cost_center", "text"),
)


def _type(kind: str) -> sa.types.TypeEngine:  # type: ignore[type-arg]
    if kind in ("money", "decimal"):
        return ExactDecimal()
    if kind == "time":
        return UTCDateTime()
    if kind == "bool":
        return sa.Boolean()
    return sa.Text()


def upgrade() -> None:
    op.create_table(
        "finops_cost_line",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("natural_key", sa.String(80), nullable=False, unique=True),
        sa.Column("collection_scope", sa.String(200), nullable=False),
        sa.Column("content_hash", sa.String(32), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        *[
            sa.Column(name, _type(kind), nullable=name not in ("billed_cost", "billing_currency"))
            for name, kind in _COST_COLUMNS
        ],
    )
    op.create_index("ix_finops_cost_line_period", "finops_cost_line", ["charge_period_start"])
    op.create_index("ix_finops_cost_line_scope", "finops_cost_line", ["collection_scope", "charge_period_start"])
    op.create_index("ix_finops_cost_line_dag", "finops_cost_line", ["x_dag_id"])
    op.create_table(
        "finops_cost_line_audit",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("natural_key", sa.String(80), nullable=False, index=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("billing_currency", sa.String(3), nullable=False),
        sa.Column("old_billed_cost", ExactDecimal()),
        sa.Column("new_billed_cost", ExactDecimal()),
        sa.Column("old_effective_cost", ExactDecimal()),
        sa.Column("new_effective_cost", ExactDecimal()),
        sa.Column("old_content_hash", sa.String(32)),
        sa.Column("new_content_hash", sa.String(32)),
    )
    op.create_table(
        "finops_ingest_batch",
        sa.Column("batch_id", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("collection_scope", sa.String(200), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime()),
        sa.Column("window_start", UTCDateTime()),
        sa.Column("window_end", UTCDateTime()),
        *[
            sa.Column(n, sa.Integer(), nullable=False, server_default="0")
            for n in ("rows_in", "inserted", "restated", "unchanged", "removed", "quarantined")
        ],
    )
    op.create_table(
        "finops_quarantine",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.String(64), nullable=False, index=True),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("row_number", sa.Integer()),
        sa.Column("field", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text()),
        sa.Column("at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "finops_breach",
        sa.Column("dedupe_key", sa.String(300), primary_key=True),
        sa.Column("budget", sa.String(200), nullable=False),
        sa.Column("period_start", UTCDateTime(), nullable=False),
        sa.Column("threshold_pct", ExactDecimal(), nullable=False),
        sa.Column("basis", sa.String(16), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("budget_amount", ExactDecimal(), nullable=False),
        sa.Column("actual", ExactDecimal(), nullable=False),
        sa.Column("forecast", ExactDecimal()),
        sa.Column("actions", sa.Text(), nullable=False),
        sa.Column("first_seen", UTCDateTime(), nullable=False),
    )
