"""Streaming: events fold into aggregated cost lines and engine snapshots are periodic (issue 6).

``seq`` orders a consumer's events (a snapshot records the last one it includes; later ones are replayed after
a crash), ``payload`` keeps each event to replay or fold it, ``line_key`` / ``folded`` track which cost line
it went to. Events written before this revision already have one cost line each; they are marked folded.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("finops_stream_event") as t:
        t.add_column(sa.Column("seq", sa.BigInteger()))
        t.add_column(sa.Column("payload", sa.Text()))
        t.add_column(sa.Column("line_key", sa.String(64)))
        t.add_column(sa.Column("folded", sa.String(64)))
    op.execute("UPDATE finops_stream_event SET folded = 'pre-0006'")
    op.create_index("ix_finops_stream_event_unfolded", "finops_stream_event", ["consumer", "folded", "line_key"])
    op.create_index("ix_finops_stream_event_seq", "finops_stream_event", ["consumer", "seq"])


def downgrade() -> None:
    op.drop_index("ix_finops_stream_event_seq", table_name="finops_stream_event")
    op.drop_index("ix_finops_stream_event_unfolded", table_name="finops_stream_event")
    with op.batch_alter_table("finops_stream_event") as t:
        t.drop_column("folded")
        t.drop_column("line_key")
        t.drop_column("payload")
