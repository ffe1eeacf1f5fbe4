"""The aggregation DAG on the real Airflow scheduler: a FOCUS file the test writes next to the dags folder (present),
and GCP billing without a connection (skipped with a warning)."""

from __future__ import annotations

from pathlib import Path

from finops_provider.aggregation_dag import build_aggregation_dag

dag = build_aggregation_dag(
    dag_id="finops_it_aggregation",
    sources={
        "focus": {"path": str(Path(__file__).resolve().parents[1] / "aggregation_focus.csv")},
        "gcp": {"options": {"dataset": "billing", "table": "gcp_billing_export_v1_X"}},
    },
    schedule=None,
    trailing_days=1,
    period="month",
    default_args={"retries": 0},
)
