"""The FinOps cluster policy on real operator instances (databricks, google, snowflake, cncf-kubernetes)."""

from __future__ import annotations

import json

import jinja2
import pytest

from finops_provider.core.platforms import label_value

RUN_IDS = [
    pytest.param("scheduled__2026-03-01T00:00:00+00:00", id="scheduled"),
    pytest.param("manual__2026-03-01T10:11:12.123456+00:00", id="manual-micros"),
    pytest.param("asset_triggered__2026-03-01T00:00:00+00:00", id="asset"),
]


@pytest.fixture
def policy_on(monkeypatch, tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("teams:\n  data-eng: {cost_center: CC-100-DATA}\ndags:\n  'sales_*': {team: data-eng}\n")
    monkeypatch.setenv("FINOPS_CONFIG", str(cfg))
    monkeypatch.setenv("AIRFLOW__FINOPS__CLUSTER_POLICY", "True")


def _ids(task_id: str) -> dict[str, str]:
    return {"airflow_dag_id": "sales_etl", "airflow_task_id": task_id, "airflow_run_id": "{{ run_id }}",
            "team": "data-eng", "cost_center": "CC-100-DATA"}  # fmt: skip


def test_databricks_custom_tags_on_every_cluster(policy_on) -> None:
    from airflow.providers.databricks.operators.databricks import DatabricksSubmitRunOperator
    from airflow.sdk import DAG

    from finops_provider.policy import task_policy

    with DAG("sales_etl"):
        op = DatabricksSubmitRunOperator(
            task_id="spark",
            json={
                "tasks": [{"task_key": "a", "new_cluster": {"node_type_id": "i3.xlarge", "custom_tags": {"team": "x"}}},
                          {"task_key": "b", "job_cluster_key": "shared"}],
                "job_clusters": [{"job_cluster_key": "shared", "new_cluster": {"node_type_id": "m5.xlarge"}}],
            },
        )  # fmt: skip
    task_policy(op)
    a = op.json["tasks"][0]["new_cluster"]["custom_tags"]
    assert a == {**_ids("spark"), "team": "x"}  # the author's tag is kept
    assert op.json["job_clusters"][0]["new_cluster"]["custom_tags"] == _ids("spark")
    assert "json" in op.template_fields  # so {{ run_id }} is rendered when the task runs


@pytest.mark.parametrize("run_id", RUN_IDS)
def test_bigquery_labels_are_label_safe(policy_on, run_id) -> None:
    from airflow.providers.google.cloud.operators.bigquery import BigQueryInsertJobOperator
    from airflow.sdk import DAG

    from finops_provider.policy import task_policy

    with DAG("sales_etl"):
        op = BigQueryInsertJobOperator(task_id="Aggregate.Orders", configuration={"query": {"query": "select 1"}})
    task_policy(op)
    labels = op.configuration["labels"]
    assert labels["airflow_task_id"] == "aggregate_orders" and labels["cost_center"] == "cc-100-data"
    rendered = jinja2.Environment(autoescape=False).from_string(labels["airflow_run_id"]).render(run_id=run_id)
    assert rendered == label_value(run_id)
    for v in (rendered, labels["airflow_dag_id"], labels["team"]):
        assert len(v) <= 63 and set(v) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-")


def test_snowflake_query_tag_session_parameter(policy_on) -> None:
    from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
    from airflow.providers.snowflake.operators.snowflake import SnowflakeSqlApiOperator
    from airflow.sdk import DAG

    from finops_provider.policy import task_policy

    with DAG("sales_etl"):
        api = SnowflakeSqlApiOperator(task_id="merge", sql="merge ...", statement_count=1)
        generic = SQLExecuteQueryOperator(task_id="load", sql="insert ...", conn_id="snowflake_prod")
        other = SQLExecuteQueryOperator(task_id="pg", sql="select 1", conn_id="postgres_default")
    for op in (api, generic, other):
        task_policy(op)
    assert json.loads(api.hook_params["session_parameters"]["QUERY_TAG"]) == _ids("merge")
    assert json.loads(generic.hook_params["session_parameters"]["QUERY_TAG"]) == _ids("load")
    assert "session_parameters" not in other.hook_params  # not a Snowflake connection
    assert "hook_params" in generic.template_fields


def test_kubernetes_pod_labels_and_exact_annotations(policy_on) -> None:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk import DAG

    from finops_provider.policy import task_policy

    with DAG("sales_etl"):
        op = KubernetesPodOperator(task_id="transform", image="python:3.11", labels={"app": "etl"})
    task_policy(op)
    assert op.labels == {"app": "etl", "team": "data-eng", "cost_center": "cc-100-data"}
    assert op.annotations["airflow_run_id"] == "{{ run_id }}" and op.annotations["airflow_dag_id"] == "sales_etl"
    assert {"labels", "annotations"} <= set(op.template_fields)


def test_policy_is_opt_in(monkeypatch) -> None:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    from finops_provider.policy import task_policy

    monkeypatch.delenv("AIRFLOW__FINOPS__CLUSTER_POLICY", raising=False)
    op = KubernetesPodOperator(task_id="transform", image="python:3.11")
    task_policy(op)
    assert not op.labels and not op.annotations
