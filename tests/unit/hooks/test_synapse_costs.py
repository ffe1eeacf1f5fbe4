"""SynapseCostHook: billed Synapse meters through the real CostManagementClient against the local Query API
peer, pool sizes / tags from a local Synapse Resource Manager peer (both over TLS), estimates and reconciliation."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.reconcile import estimate_errors, reconcile
from finops_provider.core.retry import RetryPolicy
from tests.fixtures.azure import SCOPE, StaticTokenCredential
from tests.fixtures.platforms import task_try
from tests.fixtures.synapse import WORKSPACE_ID, big_data_pool, spark_batch, sql_pool

UTC = dt.UTC
DAY = dt.datetime(2026, 3, 1, tzinfo=UTC)
NEXT = DAY + dt.timedelta(days=1)
RUN = "scheduled__2026-03-01T00:00:00+00:00"
DW100C, TB, VCORE = Decimal("1.20"), Decimal("5.00"), Decimal("0.143")  # ratecards/synapse.yaml
SPARK_TAGS = {"airflow_dag_id": "sales_etl", "airflow_task_id": "spark_transform", "airflow_run_id": RUN}
COLUMNS = [
    ("Cost", "Number"),
    ("UsageQuantity", "Number"),
    ("UsageDate", "Number"),
    ("ResourceId", "String"),
    ("Meter", "String"),
    ("Currency", "String"),
]
WS = WORKSPACE_ID.lower()  # Cost Management returns resource ids lower-cased
OTHER_WS = WS.replace("finops-ws", "other-ws")
ACTUAL = [
    [288.0, 240.0, 20260301, f"{WS}/sqlpools/dwh", "100 DWUs", "USD"],
    [3.575, 25.0, 20260301, f"{WS}/bigdatapools/etl", "vCore", "USD"],
    [2.5, 0.5, 20260301, WS, "Standard Data Processed", "USD"],
    [0.01, 10.0, 20260301, WS, "Orchestration Activity Run", "USD"],
    [99.0, 1.0, 20260301, f"{OTHER_WS}/sqlpools/x", "100 DWUs", "USD"],  # same resource group, other workspace
]
AMORTIZED = [list(r) for r in ACTUAL]
AMORTIZED[0] = [200.0, 240.0, 20260301, f"{WS}/sqlpools/dwh", "100 DWUs", "USD"]  # reserved capacity


def _hook(api: Any, **kw: Any) -> Any:
    from finops_provider.hooks.synapse_costs import SynapseCostHook

    return SynapseCostHook(
        base_url=api.server.url_for("/"),
        credential=StaticTokenCredential(),
        retry_policy=RetryPolicy(max_attempts=2, base_s=0.001, cap_s=0.002, budget_s=5),
        sleep=lambda s: None,
        repull_days=0,
        workspace_id=WORKSPACE_ID,
        **kw,
    )


@pytest.fixture
def synapse(azure_cost_api, synapse_arm) -> Any:
    azure_cost_api.set("ActualCost", ACTUAL, columns=COLUMNS)
    azure_cost_api.set("AmortizedCost", AMORTIZED, columns=COLUMNS)
    synapse_arm.pools["sqlPools"] = [sql_pool("dwh", tags={"team": "data-eng"})]
    synapse_arm.pools["bigDataPools"] = [big_data_pool("etl", autoscale_max=10, tags=SPARK_TAGS)]
    return azure_cost_api


@pytest.mark.parametrize(
    ("amortized", "queries"),
    [pytest.param(True, 2, id="actual-and-amortized"), pytest.param(False, 1, id="actual-only")],
)
def test_meters_mapped_to_synapse_records(synapse, synapse_arm, platform_ledger, amortized, queries) -> None:
    from finops_provider.collect import get_collector

    res, _ = get_collector("synapse")(
        platform_ledger, FinOpsConfig(), DAY, NEXT, hook=_hook(synapse, scope=SCOPE, amortized=amortized)
    )
    by_sku = {r.sku_id: r for r in res.records}
    assert set(by_sku) == {"DW100c_HOUR", "SPARK_VCORE_HOUR", "SERVERLESS_SQL_TB", None}
    assert all(r.x_platform == "synapse" and r.x_cost_kind == "billed" for r in res.records)
    assert by_sku["DW100c_HOUR"].billed_cost == Decimal("288.0") and by_sku["DW100c_HOUR"].pricing_quantity == 240
    assert by_sku["DW100c_HOUR"].effective_cost == (Decimal("200.0") if amortized else None)
    assert by_sku["SERVERLESS_SQL_TB"].pricing_unit == "TB" and by_sku["SERVERLESS_SQL_TB"].pricing_quantity == Decimal(
        "0.5"
    )
    assert not any("other-ws" in (r.resource_id or "") for r in res.records)  # other workspace filtered out
    [spark] = [r for r in platform_ledger.records() if r.sku_id == "SPARK_VCORE_HOUR"]
    assert (spark.x_dag_id, spark.x_task_id, spark.x_run_id) == ("sales_etl", "spark_transform", RUN)  # pool tags
    assert next(r for r in platform_ledger.records() if r.sku_id == "DW100c_HOUR").x_team == "data-eng"
    assert platform_ledger.totals().get("USD").amount == Decimal("288.0") + Decimal("3.575") + Decimal("2.51")
    bodies = [r["json"] for r in synapse.requests]
    assert len(bodies) == queries and res.requests == queries + 2  # + sqlPools and bigDataPools lists
    ds = bodies[0]["dataset"]
    assert [g["name"] for g in ds["grouping"]] == ["ResourceId", "Meter"]
    assert ds["aggregation"]["totalQuantity"] == {"name": "UsageQuantity", "function": "Sum"}
    assert {f["dimensions"]["name"]: f["dimensions"]["values"] for f in ds["filter"]["and"]} == {
        "MeterCategory": ["Azure Synapse Analytics"],
        "ResourceGroupName": ["rg-analytics"],
    }
    _, again = get_collector("synapse")(platform_ledger, FinOpsConfig(), DAY, NEXT, hook=_hook(synapse, scope=SCOPE))
    assert again.inserted == 0  # idempotent re-collection


@pytest.mark.parametrize(
    ("sku", "status", "expected"),
    [
        pytest.param("DW1000c", "Online", 10 * Decimal("0.5") * DW100C, id="dw1000c-online"),
        pytest.param("DW100c", "Online", Decimal("0.5") * DW100C, id="dw100c-online"),
        pytest.param("DW30000c", "Online", 300 * Decimal("0.5") * DW100C, id="dw30000c-online"),
        pytest.param("DW1000c", "Paused", Decimal(0), id="paused-costs-nothing"),
    ],
)
def test_dedicated_pool_estimate_read_from_the_api(synapse, synapse_arm, sku, status, expected) -> None:
    synapse_arm.pools["sqlPools"] = [sql_pool("dwh", sku=sku, status=status)]
    est = _hook(synapse).estimate_sql_pool(task_try(task_id="load_dwh", minutes=30), pool_name="dwh")
    assert est.billed_cost == expected and est.sku_id == "DW100c_HOUR"
    assert est.x_line_item_id == f"sales_etl/{RUN}/load_dwh/-1/1" and est.x_cost_kind == "estimate"
    assert est.resource_id.endswith("/sqlPools/dwh") and any("sqlPools/dwh" in p for p in synapse_arm.requests)


def test_unknown_service_objective_is_rejected(synapse) -> None:
    with pytest.raises(ValueError, match="DW100c"):
        _hook(synapse).estimate_sql_pool(task_try(), sql_pool=sql_pool("gen1", sku="DW1000"))


@pytest.mark.parametrize(
    ("batch", "vcore_hours"),
    [
        pytest.param(
            spark_batch(17, "etl", executors=2, running_at="2026-03-01T10:05:00Z", ended_at="2026-03-01T11:05:00Z"),
            Decimal(24),  # (2 executors + driver) x 8 vCores (Medium) x 1 h
            id="livy-batch",
        ),
        pytest.param(None, Decimal(40), id="pool-autoscale-max"),  # 10 nodes x 8 vCores x 0.5 h (task duration)
    ],
)
def test_spark_estimate(synapse, batch, vcore_hours) -> None:
    pool = big_data_pool("etl", autoscale_max=10)
    est = _hook(synapse).estimate_spark(
        task_try(task_id="spark_transform", minutes=30), big_data_pool=pool, batch=batch
    )
    assert est.pricing_quantity == vcore_hours and est.billed_cost == vcore_hours * VCORE


def test_serverless_estimate(synapse) -> None:
    est = _hook(synapse).estimate_serverless(task_try(task_id="explore"), data_processed_mb=250_000)
    assert est.billed_cost == Decimal("0.25") * TB and est.pricing_unit == "TB"


def test_spark_estimate_superseded_by_truth(synapse, platform_ledger) -> None:
    from finops_provider.collect import CollectResult, get_collector, ingest_collected

    hook = _hook(synapse, scope=SCOPE)
    batch = spark_batch(17, "etl", executors=2, running_at="2026-03-01T10:05:00Z", ended_at="2026-03-01T11:05:00Z")
    est = hook.estimate_spark(task_try(task_id="spark_transform", minutes=60), pool_name="etl", batch=batch)
    assert est.billed_cost == Decimal("3.432")  # 24 vCore-hours; the bill says 25 (startup of the nodes)
    ingest_collected(platform_ledger, FinOpsConfig(), CollectResult(records=[est], source="airflow-estimate"),
                     replace_window=False)  # fmt: skip
    get_collector("synapse")(platform_ledger, FinOpsConfig(), DAY, NEXT, hook=hook)
    rep = reconcile(platform_ledger, DAY, NEXT)
    [t] = rep.tasks
    assert t.platform == "synapse" and t.truth.amount == Decimal("3.575") and rep.superseded_rows == 1
    assert t.error_pct == Decimal("-4.000000")  # (3.432 - 3.575) / 3.575
    assert platform_ledger.count(cost_kind="estimate") == 0
    [kept] = estimate_errors(platform_ledger, platform="synapse")
    assert Decimal(str(kept["error_pct"])) == Decimal("-4")
