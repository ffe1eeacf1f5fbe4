"""Collect the three clouds' bills into the FinOps ledger every day.

Each task re-pulls a trailing window (3 days by default), so late and restated billing data replaces what
was collected before; running the DAG twice, or backfilling overlapping intervals, never double counts.

Connections: ``aws_default`` (Cost Explorer), ``google_cloud_default`` (BigQuery billing export),
``azure_default`` (Cost Management). A source without a connection fails its own task only.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from finops_provider.operators.collect import CollectCostsOperator
from finops_provider.operators.focus_ingest import IngestFocusFileOperator

with DAG(
    dag_id="finops_collect_clouds",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["finops"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=10)},
) as dag:
    aws = CollectCostsOperator(
        task_id="collect_aws_cost_explorer",
        source="aws",
        options={"tag_key": "airflow_dag_id", "dimension": "SERVICE"},
    )
    gcp = CollectCostsOperator(
        task_id="collect_gcp_billing_export",
        source="gcp",
        conn_id="google_cloud_default",
        options={"dataset": "billing", "table": "gcp_billing_export_v1_XXXXXX_XXXXXX_XXXXXX"},
    )
    azure = CollectCostsOperator(
        task_id="collect_azure_cost_management",
        source="azure",
        conn_id="azure_default",
        options={"scope": "/subscriptions/00000000-0000-0000-0000-000000000000", "tag_key": "team"},
    )
    focus_export = IngestFocusFileOperator(
        task_id="ingest_aws_focus_export",
        path="s3://billing-exports/focus/data/BILLING_PERIOD={{ data_interval_start.strftime('%Y-%m') }}/"
        "part-0.parquet",
        conn_id="aws_default",
        source="aws-focus-export",
    )
