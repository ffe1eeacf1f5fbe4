"""Budget enforcement with finops-provider, end to end.

* ``default_args=finops_default_args(...)``: every task records its run-time cost estimate in the FinOps ledger
  (here 2 Kubernetes cores x run time x the rate card), evaluates the budgets it affects and performs the
  actions of any threshold crossed (Slack, Jira, ServiceNow, pause via the REST API).
* ``on_success_callback`` / ``on_failure_callback=FinOpsDagCallback()``: totals the run and enforces run /
  day / month budgets once the run is over (and performs ``pause_after_run``).
* ``BudgetGateOperator`` before the expensive task: actual + forecast + the task's pre-flight estimate against
  the budget; over budget, a human approves or rejects on the Required Actions page (HITL).
* ``BudgetHeadroomSensor`` (deferrable) waits in the triggerer until the budget has headroom again.
* ``BillingDataFreshnessSensor`` (deferrable) waits until yesterday's billed AWS costs are final.

Set-up: the FinOps config (``[finops] config_file``) declares the budgets, e.g. a ``reporting-daily`` budget
with ``scope: {dag: example_finops_enforcement}``; the connection ``finops_airflow_api_default`` holds an
Airflow user allowed to pause DAGs; ``slack_default`` / ``jira_default`` receive the alerts (see README).
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from finops_provider.callbacks import FinOpsDagCallback, FinOpsTaskCallback, finops_default_args
from finops_provider.operators.budget_gate import BudgetGateOperator
from finops_provider.sensors.budget import BillingDataFreshnessSensor, BudgetHeadroomSensor


def transform() -> str:
    return "transformed"


with DAG(
    dag_id="example_finops_enforcement",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    tags=["finops", "team:data-eng", "cost_center:CC-100-DATA"],
    # one line per DAG: per-task cost estimates + budget actions
    default_args=finops_default_args(platform="kubernetes", sku="cpu_core_hour", quantity_per_hour="2"),
    on_success_callback=FinOpsDagCallback(),
    on_failure_callback=FinOpsDagCallback(),
) as dag:
    billing_final = BillingDataFreshnessSensor(
        task_id="aws_billing_final",
        source="aws-ce",
        start="{{ macros.ds_add(ds, -1) }}T00:00:00+00:00",
        end="{{ ds }}T00:00:00+00:00",
        poke_interval=1800,
        timeout=6 * 3600,
    )
    headroom = BudgetHeadroomSensor(task_id="wait_for_headroom", budget="reporting-daily", below_pct="90")
    gate = BudgetGateOperator(
        task_id="budget_gate",
        budgets=["reporting-daily"],
        # the next task's pre-flight estimate, e.g. from a BigQuery dry run pushed to XCom:
        # estimate="{{ ti.xcom_pull('dry_run')['cost'] }}"
        estimate="25.00",
        on_breach="approval",
        slack_conn_id="slack_default",
        response_timeout=dt.timedelta(hours=4),  # no answer: Reject -> downstream skipped
    )
    heavy = PythonOperator(
        task_id="heavy_transform",
        python_callable=transform,
        # a per-task declaration beats the DAG default: 8 DBU/h of Databricks Jobs Compute
        params={"finops": {"platform": "databricks", "sku": "JOBS_COMPUTE", "quantity_per_hour": "8"}},
    )
    publish = PythonOperator(
        task_id="publish",
        python_callable=transform,
        on_success_callback=[FinOpsTaskCallback(cost="0.40")],  # a fixed estimate for this task
    )
    billing_final >> headroom >> gate >> heavy >> publish
