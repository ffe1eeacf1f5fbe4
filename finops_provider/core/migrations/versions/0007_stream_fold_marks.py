"""Streaming: a fold is recorded once per cost line (``finops_stream_fold``), not by updating each event (issue 6).

The index on ``(consumer, folded, line_key)`` took two thirds of a micro-batch's database time (an insertion
point per line key, all over the index). Folds are now recorded per consumer and line key (the last ``seq``
folded) with a low watermark per consumer (line key ``''``); the index is dropped. Existing data: the low
watermark is set just before each consumer's first unfolded event, so the events folded so far stay folded
(their ``folded`` column is kept) and the unfolded ones are folded by the next start.

``finops_breach.claimed_by`` records who claimed a breach: a stream processor claims before its batch is
written and re-delivers its own claims that a crash left without a feed row.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

from finops_provider.core.schema import UTCDateTime

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    fold = op.create_table(
        "finops_stream_fold",
        sa.Column("consumer", sa.String(200), primary_key=True),
        sa.Column("line_key", sa.String(64), primary_key=True),
        sa.Column("upto_seq", sa.BigInteger(), nullable=False),
        sa.Column("fold_id", sa.String(64), nullable=False),
        sa.Column("folded_at", UTCDateTime(), nullable=False),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT consumer, MIN(CASE WHEN folded IS NULL THEN seq END), MAX(seq) FROM finops_stream_event "
            "WHERE seq IS NOT NULL GROUP BY consumer"
        )
    ).all()
    now = dt.datetime.now(dt.UTC)
    marks = [
        {
            "consumer": consumer,
            "line_key": "",
            "upto_seq": int(first_unfolded) - 1 if first_unfolded is not None else int(last),
            "fold_id": "pre-0007",
            "folded_at": now,
        }
        for consumer, first_unfolded, last in rows
    ]
    if marks:
        op.bulk_insert(fold, marks)
    op.drop_index("ix_finops_stream_event_unfolded", table_name="finops_stream_event")
    with op.batch_alter_table("finops_breach") as t:
        t.add_column(sa.Column("claimed_by", sa.String(200)))


def downgrade() -> None:
    with op.batch_alter_table("finops_breach") as t:
        t.drop_column("claimed_by")
    op.execute(
        "UPDATE finops_stream_event SET folded = 'post-0007' WHERE folded IS NULL AND EXISTS (SELECT 1 FROM "
        "finops_stream_fold f WHERE f.consumer = finops_stream_event.consumer AND (f.line_key = '' OR "
        "f.line_key = finops_stream_event.line_key) AND finops_stream_event.seq <= f.upto_seq)"
    )
    op.create_index("ix_finops_stream_event_unfolded", "finops_stream_event", ["consumer", "folded", "line_key"])
    op.drop_table("finops_stream_fold")
