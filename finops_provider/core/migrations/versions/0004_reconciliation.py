"""Reconciliation: run-time estimates superseded by billed truth, estimate errors (issue 4).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    pass  # tables are added here together with their definitions in finops_provider/core/schema.py
