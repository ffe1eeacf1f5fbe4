"""Streaming: processed events, dead letters, engine state, checkpoints, live feed (issue 6).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from finops_provider.core.schema import UTCDateTime

revision = "0003"
down_revision = "0002"

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "finops_stream_event",
        sa.Column("event_id", sa.String(200), primary_key=True),
        sa.Column("consumer", sa.String(200), nullable=False),
        sa.Column("producer", sa.String(200)),
        sa.Column("position", sa.String(300)),
        sa.Column("event_time", UTCDateTime(), nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "finops_stream_dead_letter",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("position_key", sa.String(400), nullable=False, unique=True),
        sa.Column("consumer", sa.String(200), nullable=False),
        sa.Column("field", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("raw", sa.Text()),
        sa.Column("at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "finops_stream_state",
        sa.Column("consumer", sa.String(200), primary_key=True),
        sa.Column("state_key", sa.String(600), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("period_end", UTCDateTime()),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "finops_stream_checkpoint",
        sa.Column("consumer", sa.String(200), primary_key=True),
        sa.Column("partition", sa.String(300), primary_key=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("lag", sa.BigInteger()),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "finops_stream_feed",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("dedupe_key", sa.String(400), nullable=False, unique=True),
        sa.Column("consumer", sa.String(200), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("event_time", UTCDateTime()),
        sa.Column("payload", sa.Text(), nullable=False),
    )
    op.create_index("ix_finops_stream_feed_kind", "finops_stream_feed", ["kind", "id"])
