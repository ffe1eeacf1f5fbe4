"""Streaming: processed events, dead letters, engine checkpoints (issue 6).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    pass  # tables are added here together with their definitions in finops_provider/core/schema.py
