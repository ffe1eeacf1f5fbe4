"""RedshiftCostHook: DescribeClusters through moto; Serverless SYS_* views as a DuckDB copy (moto has no
redshift-serverless)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.reconcile import reconcile
from tests.fixtures.platforms import task_try

UTC = dt.UTC
RUN = "scheduled__2026-03-01T00:00:00+00:00"
LABEL = f"airflow_dag_id=sales_etl;airflow_task_id=unload;airflow_run_id={RUN}"


@pytest.fixture
def redshift(moto_ce):  # moto_ce: mock_aws + the aws_default connection
    import boto3

    client = boto3.client("redshift", region_name="us-east-1")
    kw = {"MasterUsername": "admin", "MasterUserPassword": "Passw0rd!x", "ClusterType": "multi-node"}
    client.create_cluster(ClusterIdentifier="analytics", NodeType="ra3.4xlarge", NumberOfNodes=2,
                          Tags=[{"Key": "team", "Value": "analytics"}], **kw)  # fmt: skip
    client.create_cluster(ClusterIdentifier="old-dw", NodeType="dc2.large", NumberOfNodes=4, **kw)
    client.pause_cluster(ClusterIdentifier="old-dw")
    return client


def _hook(**kw):
    from finops_provider.hooks.redshift_costs import RedshiftCostHook

    return RedshiftCostHook(aws_conn_id="aws_default", region_name="us-east-1", **kw)


def test_provisioned_node_hours_paused_costs_nothing(redshift, platform_ledger) -> None:
    from finops_provider.hooks.redshift_costs import collect_redshift

    born = redshift.describe_clusters(ClusterIdentifier="analytics")["Clusters"][0]["ClusterCreateTime"]
    day = born.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    res, _ = collect_redshift(platform_ledger, FinOpsConfig(), day, day + dt.timedelta(days=2),
                              hook=_hook(), now=born + dt.timedelta(hours=2))  # fmt: skip
    assert {r.resource_id for r in res.records} == {"analytics"}
    assert sum(r.pricing_quantity for r in res.records) == 4  # 2 nodes x 2 h
    assert platform_ledger.totals().get("USD").amount == 4 * Decimal("3.26")
    assert res.records[0].x_team == "analytics"
    assert any("old-dw: paused" in n for n in res.notes)


def _serverless_copy():
    import duckdb

    conn = duckdb.connect()
    # docs.aws.amazon.com/redshift/latest/dg/SYS_SERVERLESS_USAGE.html and SYS_QUERY_HISTORY.html
    conn.execute(
        "CREATE TABLE sys_serverless_usage (start_time TIMESTAMP, end_time TIMESTAMP, compute_seconds BIGINT, "
        "compute_capacity DOUBLE, data_storage BIGINT, cross_region_transferred_data BIGINT, charged_seconds BIGINT)"
    )
    conn.execute(
        "CREATE TABLE sys_query_history (user_id INTEGER, query_id BIGINT, query_label VARCHAR, transaction_id BIGINT, "
        "session_id INTEGER, database_name VARCHAR, query_type VARCHAR, status VARCHAR, result_cache_hit BOOLEAN, "
        "start_time TIMESTAMP, end_time TIMESTAMP, elapsed_time BIGINT, queue_time BIGINT, execution_time BIGINT, "
        "query_text VARCHAR)"
    )
    conn.execute(
        "INSERT INTO sys_serverless_usage VALUES ('2026-03-01 10:00:00', '2026-03-01 10:01:00', 60, 8, 0, 0, 14400), "
        "('2026-03-01 10:01:00', '2026-03-01 10:02:00', 60, 8, 0, 0, 7200)"
    )
    conn.execute(
        "INSERT INTO sys_query_history VALUES "
        f"(100, 1, '{LABEL}', 1, 1, 'dev', 'UNLOAD', 'success', false, '2026-03-01 10:00:00', "
        "'2026-03-01 10:10:00', 3000000, 0, 3000000, 'unload ...'), "
        "(100, 2, 'default', 2, 2, 'dev', 'SELECT', 'success', false, '2026-03-01 10:00:00', "
        "'2026-03-01 10:10:00', 1000000, 0, 1000000, 'select 1')"
    )
    return conn


def test_serverless_rpu_hours_by_query_group_and_reconciliation(moto_ce, platform_ledger) -> None:
    from finops_provider.collect import CollectResult, ingest_collected
    from finops_provider.hooks.redshift_costs import collect_redshift

    day = dt.datetime(2026, 3, 1, tzinfo=UTC)
    hook = _hook(connection=_serverless_copy())
    task = task_try(task_id="unload", run_id=RUN, minutes=10)
    est = hook.estimate_run(task, base_rpus=8)  # 8 RPU x 1/6 h x 0.375
    assert est.billed_cost == Decimal("0.5") and est.x_cost_kind == "estimate"
    ingest_collected(platform_ledger, FinOpsConfig(), CollectResult(records=[est], source="airflow-estimate"),
                     replace_window=False)  # fmt: skip
    res, _ = collect_redshift(platform_ledger, FinOpsConfig(), day, day + dt.timedelta(days=1), hook=hook)
    serverless = [r for r in res.records if r.sku_id == "SERVERLESS_RPU_HOUR"]
    total = Decimal(21600) / 3600 * Decimal("0.375")  # 6 RPU-hours
    assert sum(r.billed_cost for r in serverless) == total
    [labelled] = [r for r in serverless if r.x_task_id == "unload"]
    assert labelled.billed_cost == total * 3 / 4  # 3 of 4 elapsed seconds ran under the query group
    rep = reconcile(platform_ledger, day, day + dt.timedelta(days=1))
    [t] = rep.tasks
    assert t.truth.amount == Decimal("1.6875") and t.run_id == RUN
    assert t.error_pct == ((Decimal("0.5") - Decimal("1.6875")) / Decimal("1.6875") * 100).quantize(Decimal("0.000001"))
    assert platform_ledger.totals().get("USD").amount == total
