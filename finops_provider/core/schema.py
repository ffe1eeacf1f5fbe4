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
    # 0007: who claimed it ("stream:<consumer>" for a stream processor, which re-delivers its own claims that a
    # crash left without a feed row; NULL: the batch engine and the callbacks)
    sa.Column("claimed_by", sa.String(200)),
)

#: Durable outbox (issue 5): every enforcement action (alert, ticket, incident, pause) is a row here, enqueued
#: once per breach (``dedupe_key`` unique) and delivered with leases and backoff until done.
outbox = sa.Table(
    "finops_outbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("dedupe_key", sa.String(400), nullable=False, unique=True),
    sa.Column("kind", sa.String(32), nullable=False),  # slack | jira | servicenow | pause_after_run | pause_now
    sa.Column("payload", sa.Text(), nullable=False),  # JSON; money as strings
    sa.Column("status", sa.String(16), nullable=False),  # pending | sending | done | dead
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
    sa.Column("lease_until", UTCDateTime()),
    sa.Column("last_error", sa.Text()),
    sa.Column("result", sa.Text()),  # e.g. the Jira issue key, the ServiceNow sys_id
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("delivered_at", UTCDateTime()),
    sa.Index("ix_finops_outbox_due", "status", "next_attempt_at"),
)

#: What enforcement did and who caused it: pauses, unpauses, approvals, gate decisions (issue 5).
enforcement_event = sa.Table(
    "finops_enforcement_event",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),  # pause | unpause | approved | rejected | gate_* | recovery
    sa.Column("dag_id", sa.String(250)),
    sa.Column("run_id", sa.String(250)),
    sa.Column("task_id", sa.String(250)),
    sa.Column("actor", sa.String(250), nullable=False),  # a user name, or "finops:<budget>"
    sa.Column("reason", sa.Text()),
    sa.Column("dedupe_key", sa.String(400)),
    sa.Column("detail", sa.Text()),  # JSON: budget state (money as strings)
    sa.Index("ix_finops_enforcement_event_dag", "dag_id", "at"),
)

#: Streaming (issue 6): every event id the stream engine has applied (the idempotency key of the stream).
stream_event = sa.Table(
    "finops_stream_event",
    metadata,
    sa.Column("event_id", sa.String(200), primary_key=True),
    sa.Column("consumer", sa.String(200), nullable=False),
    sa.Column("producer", sa.String(200)),
    sa.Column("position", sa.String(300)),  # topic:partition:offset or file:byte-offset
    sa.Column("event_time", UTCDateTime(), nullable=False),
    sa.Column("late", sa.Boolean(), nullable=False),  # beyond allowed lateness: ledger only, batch picks it up
    sa.Column("received_at", UTCDateTime(), nullable=False),
    # 0006: order of application (engine snapshots record the last seq they include; later events are replayed)
    sa.Column("seq", sa.BigInteger()),
    # 0006: the event's cost reaches finops_cost_line as part of one line per attribution, hour and fold
    sa.Column("payload", sa.Text()),  # the event as received (JSON), to replay or fold it after a crash
    sa.Column("line_key", sa.String(64)),  # the cost line it folds into (attribution + hour)
    # set for events folded before 0007, and to 'unreadable' for a recorded event that no longer decodes; from
    # 0007 on a fold is recorded in finops_stream_fold (one row per line, not an update of each event)
    sa.Column("folded", sa.String(64)),
    sa.Index("ix_finops_stream_event_seq", "consumer", "seq"),
)

#: Streaming (0007): what is folded into cost lines. Every event of ``consumer`` with ``line_key`` and
#: ``seq <= upto_seq`` is in a cost line; the row with ``line_key = ''`` is the low watermark: every event of
#: the consumer up to its ``upto_seq`` is. The rest (``folded`` NULL) waits to be folded (streaming/fold.py).
stream_fold = sa.Table(
    "finops_stream_fold",
    metadata,
    sa.Column("consumer", sa.String(200), primary_key=True),
    sa.Column("line_key", sa.String(64), primary_key=True),
    sa.Column("upto_seq", sa.BigInteger(), nullable=False),
    sa.Column("fold_id", sa.String(64), nullable=False),  # the last fold (its lines' x_line_item_id names it)
    sa.Column("folded_at", UTCDateTime(), nullable=False),
)

#: Streaming: malformed, oversized or unpriceable messages with the reason (one row per source position).
stream_dead_letter = sa.Table(
    "finops_stream_dead_letter",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("position_key", sa.String(400), nullable=False, unique=True),
    sa.Column("consumer", sa.String(200), nullable=False),
    sa.Column("field", sa.String(100), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("size", sa.Integer(), nullable=False),
    sa.Column("raw", sa.Text()),  # first 4 KiB, for diagnosis
    sa.Column("at", UTCDateTime(), nullable=False),
)

#: Streaming: engine state (running totals, detector state, clock), written in the same transaction as the rows.
stream_state = sa.Table(
    "finops_stream_state",
    metadata,
    sa.Column("consumer", sa.String(200), primary_key=True),
    sa.Column("state_key", sa.String(600), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # budget | anomaly | clock
    sa.Column("period_end", UTCDateTime()),  # states of periods ended before the watermark are not loaded
    sa.Column("payload", sa.Text(), nullable=False),  # JSON; money as strings
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

#: Streaming: next position to read per source partition, and the consumer lag seen there.
stream_checkpoint = sa.Table(
    "finops_stream_checkpoint",
    metadata,
    sa.Column("consumer", sa.String(200), primary_key=True),
    sa.Column("partition", sa.String(300), primary_key=True),  # topic:partition or the JSONL file
    sa.Column("position", sa.BigInteger(), nullable=False),
    sa.Column("lag", sa.BigInteger()),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

#: Streaming live feed: breaches and anomalies as they are detected (the dashboard and the trigger read it).
stream_feed = sa.Table(
    "finops_stream_feed",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),  # breach | anomaly
    sa.Column("dedupe_key", sa.String(400), nullable=False, unique=True),
    sa.Column("consumer", sa.String(200), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("event_time", UTCDateTime()),
    sa.Column("payload", sa.Text(), nullable=False),  # Breach.to_json() / Anomaly.to_json()
    sa.Index("ix_finops_stream_feed_kind", "kind", "id"),
)

#: Reconciliation (issue 4): run-time estimates superseded by billed truth, with the estimate error. The
#: superseded estimate row leaves ``finops_cost_line`` (so totals and budgets count truth only) and is kept here.
estimate_reconciliation = sa.Table(
    "finops_estimate_reconciliation",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("natural_key", sa.String(80), nullable=False, unique=True),  # of the superseded estimate row
    sa.Column("line_item_id", sa.Text()),
    sa.Column("platform", sa.String(100), nullable=False),
    sa.Column("dag_id", sa.String(250), nullable=False),
    sa.Column("task_id", sa.String(250), nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("charge_period_start", UTCDateTime(), nullable=False),
    sa.Column("billing_currency", sa.String(3), nullable=False),
    sa.Column("estimate", ExactDecimal(), nullable=False),  # this row's estimate
    sa.Column("task_estimate", ExactDecimal(), nullable=False),  # all estimate rows of the task run
    sa.Column("truth", ExactDecimal()),  # billed truth of the task run, same currency (None: other currency)
    sa.Column("error_pct", ExactDecimal()),  # (task_estimate - truth) / truth * 100
    sa.Column("truth_rows", sa.Integer(), nullable=False),
    sa.Column("record", sa.Text(), nullable=False),  # the estimate row as FOCUS JSON (money as strings)
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("reconciled_at", UTCDateTime(), nullable=False),
    sa.Index("ix_finops_estimate_reconciliation_task", "dag_id", "run_id", "task_id"),
)

#: Anomaly feedback (issue 8): a user's label on an anomaly (true / false / planned). ``planned`` suppresses the
#: scope's alerts from ``window_start`` until ``until``. Appended, never updated: the latest label of a key wins.
anomaly_feedback = sa.Table(
    "finops_anomaly_feedback",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("dedupe_key", sa.String(400), nullable=False),
    sa.Column("scope", sa.String(400), nullable=False),  # team=data, dag=etl ...
    sa.Column("window_start", UTCDateTime(), nullable=False),
    sa.Column("label", sa.String(16), nullable=False),  # true | false | planned
    sa.Column("note", sa.Text()),
    sa.Column("who", sa.String(250)),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("until", UTCDateTime()),  # planned: suppression ends here
    sa.Index("ix_finops_anomaly_feedback_key", "dedupe_key"),
    sa.Index("ix_finops_anomaly_feedback_scope", "scope", "label"),
)
