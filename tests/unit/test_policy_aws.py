"""The cluster policy on the amazon provider's EMR, EMR Serverless and Glue operators (real instances)."""

from __future__ import annotations

import pytest

from tests.unit.test_policy import _ids, policy_on  # noqa: F401  (the opt-in fixture)


def test_emr_job_flow_tags(policy_on) -> None:  # noqa: F811
    from airflow.providers.amazon.aws.operators.emr import EmrCreateJobFlowOperator
    from airflow.sdk import DAG

    from finops_provider.policy import task_policy

    with DAG("sales_etl"):
        op = EmrCreateJobFlowOperator(
            task_id="cluster", job_flow_overrides={"Name": "etl", "Tags": [{"Key": "team", "Value": "x"}]}
        )
        from_file = EmrCreateJobFlowOperator(task_id="from_file", job_flow_overrides="cluster.json")
    task_policy(op)
    task_policy(from_file)
    tags = {t["Key"]: t["Value"] for t in op.job_flow_overrides["Tags"]}
    assert tags == {**_ids("cluster"), "team": "x"}  # the author's tag is kept
    assert len(op.job_flow_overrides["Tags"]) == len(tags)  # no duplicate keys
    assert "job_flow_overrides" in op.template_fields  # {{ run_id }} rendered at run time
    assert from_file.job_flow_overrides == "cluster.json"  # a template file is left alone


def test_emr_serverless_job_run_tags(policy_on) -> None:  # noqa: F811
    from airflow.providers.amazon.aws.operators.emr import EmrServerlessStartJobOperator
    from airflow.sdk import DAG

    from finops_provider.policy import task_policy

    with DAG("sales_etl"):
        op = EmrServerlessStartJobOperator(
            task_id="spark", application_id="00f1", execution_role_arn="arn:aws:iam::1:role/r",
            job_driver={"sparkSubmit": {"entryPoint": "s3://b/job.py"}}, configuration_overrides={},
            config={"tags": {"owner": "me"}},
        )  # fmt: skip
    task_policy(op)
    assert op.config["tags"] == {**_ids("spark"), "owner": "me"}
    assert "config" in op.template_fields


@pytest.mark.parametrize(
    ("kwargs", "expected_extra"),
    [
        pytest.param(None, {}, id="no-create-kwargs"),
        pytest.param({"Tags": {"team": "x"}, "WorkerType": "G.1X"}, {"team": "x"}, id="author-tags-kept"),
    ],
)
def test_glue_job_tags(policy_on, kwargs, expected_extra) -> None:  # noqa: F811
    from airflow.providers.amazon.aws.operators.glue import GlueJobOperator
    from airflow.sdk import DAG

    from finops_provider.policy import task_policy

    with DAG("sales_etl"):
        op = GlueJobOperator(task_id="glue", job_name="orders", create_job_kwargs=kwargs)
    task_policy(op)
    want = {k: v for k, v in _ids("glue").items() if k != "airflow_run_id"}
    assert op.create_job_kwargs["Tags"] == {**want, **expected_extra}
    if kwargs:
        assert op.create_job_kwargs["WorkerType"] == "G.1X"
