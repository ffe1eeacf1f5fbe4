"""Enforcement: durable outbox, alert deliveries, DAG pause records (issue 5).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    pass  # tables are added here together with their definitions in finops_provider/core/schema.py
