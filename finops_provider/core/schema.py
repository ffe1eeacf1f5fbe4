"""Ledger tables (SQLAlchemy Core) and the exact column types they use.

The tables here describe the *current* schema; Alembic migrations under ``migrations/`` build it.
A test asserts that migrating an empty database yields exactly these tables and columns.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from finops_provider.core.records import COLUMNS, Kind


def _head_revision() -> str:
    """The newest migration: version files are named ``NNNN_<what>.py`` with revision id ``NNNN``."""
    names = sorted(
        p.name[:4] for p in (Path(__file__).parent / "migrations" / "versions").glob("[0-9][0-9][0-9][0-9]_*.py")
    )
    return names[-1]


#: Alembic head revision (the highest-numbered file in migrations/versions; each revises the previous one).
SCHEMA_REVISION = _head_revision()


class ExactDecimal(TypeDecorator[Decimal]):
    """NUMERIC(38, 16) on PostgreSQL; exact decimal text on SQLite (whose NUMERIC affinity would store floats)."""

    impl = sa.Numeric(38, 16)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(64))
        return dialect.type_descriptor(sa.Numeric(38, 16, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        d = value if isinstance(value, Decimal) else Decimal(str(value))
        if dialect.name == "sqlite":
            return format(d, "f")
        return d

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite stores naive UTC text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def sa_type(kind: Kind) -> Any:
    return {
        Kind.MONEY: ExactDecimal(),
        Kind.DECIMAL: ExactDecimal(),
        Kind.TIME: UTCDateTime(),
        Kind.TEXT: sa.Text(),
        Kind.TAGS: sa.Text(),
        Kind.BOOL: sa.Boolean(),
    }[kind]


metadata = sa.MetaData()

cost_line = sa.Table(
    "finops_cost_line",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("natural_key", sa.String(80), nullable=False, unique=True),
    sa.Column("collection_scope", sa.String(200), nullable=False),
    sa.Column("content_hash", sa.String(32), nullable=False),
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    *[sa.Column(c.attr, sa_type(c.kind), nullable=c.attr not in ("billed_cost", "billing_currency")) for c in COLUMNS],
    sa.Index("ix_finops_cost_line_period", "charge_period_start"),
    sa.Index("ix_finops_cost_line_scope", "collection_scope", "charge_period_start"),
    sa.Index("ix_finops_cost_line_dag", "x_dag_id"),
)

cost_line_audit = sa.Table(
    "finops_cost_line_audit",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("natural_key", sa.String(80), nullable=False, index=True),
    sa.Column("action", sa.String(16), nullable=False),  # restated | removed
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

ingest_batch = sa.Table(
    "finops_ingest_batch",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("source", sa.String(100), nullable=False),
    sa.Column("collection_scope", sa.String(200), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime()),
    sa.Column("window_start", UTCDateTime()),
    sa.Column("window_end", UTCDateTime()),
    sa.Column("rows_in", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("inserted", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("restated", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("unchanged", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("removed", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("quarantined", sa.Integer(), nullable=False, server_default="0"),
)

quarantine = sa.Table(
    "finops_quarantine",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("batch_id", sa.String(64), nullable=False, index=True),
    sa.Column("source", sa.String(100), nullable=False),
    sa.Column("row_number", sa.Integer()),
    sa.Column("field", sa.String(100), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("raw", sa.Text()),
    sa.Column("at", UTCDateTime(), nullable=False),
)

#: One row per (budget, period, threshold) breach: the atomic claim that makes alerts exactly-once.
breach = sa.Table(
    "finops_breach",
    metadata,
    sa.Column("dedupe_key", sa.String(300), primary_key=True),
    sa.Column("budget", sa.String(200), nullable=False),
    sa.Column("period_start", UTCDateTime(), nullable=False),
    sa.Column("threshold_pct", ExactDecimal(), nullable=False),
    sa.Column("basis", sa.String(16), nullable=False),  # actual | forecasted
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("budget_amount", ExactDecimal(), nullable=False),
    sa.Column("actual", ExactDecimal(), nullable=False),
    sa.Column("forecast", ExactDecimal()),
    sa.Column("actions", sa.Text(), nullable=False),  # JSON list
    sa.Column("first_seen", UTCDateTime(), nullable=False),
)
