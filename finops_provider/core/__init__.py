"""Pure-Python FinOps core: money, FOCUS records, ledger, budgets, anomalies, summaries.

Nothing in this package imports Airflow; it runs and is tested without it.
"""

from __future__ import annotations
