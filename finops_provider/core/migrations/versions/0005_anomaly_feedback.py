"""Anomaly feedback: users' labels (true / false / planned) on anomalies (issue 8).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from finops_provider.core.schema import UTCDateTime

revision = "0005"
down_revision = "0004"

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "finops_anomaly_feedback",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("dedupe_key", sa.String(400), nullable=False),
        sa.Column("scope", sa.String(400), nullable=False),
        sa.Column("window_start", UTCDateTime(), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("note", sa.Text()),
        sa.Column("who", sa.String(250)),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("until", UTCDateTime()),
    )
    op.create_index("ix_finops_anomaly_feedback_key", "finops_anomaly_feedback", ["dedupe_key"])
    op.create_index("ix_finops_anomaly_feedback_scope", "finops_anomaly_feedback", ["scope", "label"])
