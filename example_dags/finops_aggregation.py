"""The FinOps aggregation DAG: collect every source, reconcile estimates, evaluate budgets and anomalies, publish
the executive summary (Markdown, JSON, HTML under ``$FINOPS_HOME/reports/``; Slack digest when configured).

Sources: AWS Cost Explorer (``aws_default``; skipped with a warning when the connection is not defined), GCP and
Azure billing (same), and a FOCUS export file when ``FINOPS_AGGREGATION_FOCUS_FILE`` names one. Change
``schedule`` to ``"@hourly"`` for hourly aggregation. Backfill with ``airflow dags backfill``: re-running an
interval restates, never double counts.
"""

from __future__ import annotations

from finops_provider.aggregation_dag import build_aggregation_dag, env_sources

dag = build_aggregation_dag(
    dag_id="finops_aggregation",
    sources={
        **env_sources(),
        "gcp": {"options": {"dataset": "billing", "table": "gcp_billing_export_v1_XXXXXX_XXXXXX_XXXXXX"}},
        "azure": {"options": {"scope": "/subscriptions/00000000-0000-0000-0000-000000000000", "tag_key": "team"}},
    },
    schedule="@daily",
    trailing_days=3,
    period="month",
    slack_conn_id=None,  # e.g. "slack_default" to post the digest
)
