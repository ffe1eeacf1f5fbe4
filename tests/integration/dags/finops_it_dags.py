"""DAGs for the real-Airflow integration suite (copied into the test AIRFLOW_HOME/dags)."""

from __future__ import annotations

import time

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from finops_provider.callbacks import FinOpsDagCallback, FinOpsTaskCallback, finops_default_args
from finops_provider.operators.budget_gate import BudgetGateOperator


def work(seconds: float = 0.0) -> str:
    time.sleep(seconds)
    return "done"


def spender(dag_id: str) -> DAG:
    with DAG(
        dag_id,
        schedule=None,
        catchup=False,
        tags=["team:data-eng"],
        default_args=finops_default_args(cost="12.50"),
        on_success_callback=FinOpsDagCallback(),
        on_failure_callback=FinOpsDagCallback(),
    ) as dag:
        PythonOperator(task_id="expensive", python_callable=work) >> PythonOperator(
            task_id="after", python_callable=work, op_args=[3]
        )
    return dag


spender("finops_it_spender")
spender("finops_it_spender_2")  # a similar id: must not be paused

with DAG("finops_it_pause_now", schedule=None, catchup=False, default_args=finops_default_args(cost="50")):
    (
        PythonOperator(task_id="t1", python_callable=work)
        >> PythonOperator(task_id="t2", python_callable=work, op_args=[10])
        >> PythonOperator(task_id="t3", python_callable=work)
    )

_cb = FinOpsTaskCallback(cost="12")
with DAG("finops_it_twice", schedule=None, catchup=False, max_active_runs=4):
    PythonOperator(task_id="spend", python_callable=work, on_success_callback=[_cb, _cb])  # the callback runs twice

with DAG("finops_it_outage", schedule=None, catchup=False, default_args=finops_default_args(cost="20")):
    PythonOperator(task_id="spend", python_callable=work)

with DAG(
    "finops_it_flush",
    schedule=None,
    catchup=False,
    default_args=finops_default_args(cost="0"),
    on_success_callback=FinOpsDagCallback(),
):
    PythonOperator(task_id="noop", python_callable=work)

with DAG("finops_it_plain", schedule=None, catchup=False):  # no FinOps code: the listener attributes it
    PythonOperator(task_id="plain", python_callable=work)

with DAG("finops_it_gate", schedule=None, catchup=False):
    BudgetGateOperator(
        task_id="gate", budgets=["gate-budget"], estimate="5", on_breach="approval", slack_conn_id="slack_default"
    ) >> PythonOperator(task_id="expensive", python_callable=work)
