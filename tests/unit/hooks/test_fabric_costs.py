"""FabricCostHook: a capacity read from a local Resource Manager peer, CU consumption from a local Power BI
executeQueries peer (Capacity Metrics model), both over TLS; sharing with an idle row, estimates, reconciliation."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.reconcile import reconcile
from finops_provider.core.retry import RetryPolicy
from tests.fixtures.azure import StaticTokenCredential
from tests.fixtures.fabric import CAPACITY_ID, DATASET_ID, capacity, metrics_row
from tests.fixtures.platforms import task_try

UTC = dt.UTC
DAY = dt.datetime(2026, 3, 1, tzinfo=UTC)
NEXT = DAY + dt.timedelta(days=1)
RUN = "scheduled__2026-03-01T00:00:00+00:00"
CU_HOUR = Decimal("0.18")  # ratecards/fabric.yaml
RUNS = {"op-7": {"airflow_dag_id": "sales_etl", "airflow_task_id": "transform_nb", "airflow_run_id": RUN}}
ROWS = [
    metrics_row("Sales", "transform_nb", "Notebook", "2026-03-01", 3600, op="op-7"),
    metrics_row("ML", "train", "SparkJobDefinition", "2026-03-01", 5400.5),
    metrics_row("ML", "train", "SparkJobDefinition", "2026-03-01", 1799.5),  # same item, another operation row
    metrics_row("ML", "train", "SparkJobDefinition", "2026-03-02", 999),  # outside the window
]


def _hook(api: Any) -> Any:
    from finops_provider.hooks.fabric_costs import FabricCostHook

    base = api.server.url_for("/")
    return FabricCostHook(
        capacity_id=CAPACITY_ID,
        base_url=base,
        powerbi_url=base,
        credential=StaticTokenCredential(),
        retry_policy=RetryPolicy(max_attempts=2, base_s=0.001, cap_s=0.002, budget_s=5),
        sleep=lambda s: None,
    )


def _collect(fabric, ledger, **kw: Any) -> Any:
    from finops_provider.collect import get_collector

    kw.setdefault("runs", RUNS)
    return get_collector("fabric")(
        ledger, FinOpsConfig(), DAY, NEXT, hook=_hook(fabric), dataset_id=DATASET_ID, dax="EVALUATE ...", now=NEXT, **kw
    )


@pytest.fixture
def fabric(azure_cost_api, fabric_api) -> Any:
    fabric_api.rows = ROWS  # azure_cost_api: the same TLS server plus the azure_default connection
    return fabric_api


@pytest.mark.parametrize(
    ("sku", "used_share"),
    [
        pytest.param("F2", Decimal(10800) / Decimal(172800), id="f2-mostly-idle"),
        pytest.param("F64", Decimal(10800) / Decimal(64 * 24 * 3600), id="f64"),
    ],
)
def test_capacity_shared_by_cu_with_idle_row(fabric, platform_ledger, sku, used_share) -> None:
    fabric.capacity = capacity(sku=sku)
    res, _ = _collect(fabric, platform_ledger)
    cu = Decimal(sku[1:])
    total = cu * 24 * CU_HOUR
    by_item = {r.tags.get("fabric_item"): r for r in res.records if r.x_job_id != "(idle)"}
    [idle] = [r for r in res.records if r.x_job_id == "(idle)"]
    assert sum(r.billed_cost for r in res.records) == total  # owners + idle = capacity cost, exactly
    assert by_item["train"].consumed_quantity == Decimal(2)  # 7200 CU-seconds summed over its rows
    assert by_item["train"].billed_cost == 2 * by_item["transform_nb"].billed_cost  # 7200 vs 3600 CU-seconds
    assert idle.billed_cost == total - (total * used_share).quantize(Decimal("1e-16"))
    assert idle.tags["finops_idle"] == "true" and all(r.x_platform == "fabric" for r in res.records)
    assert fabric.queries[0]["queries"][0]["query"] == "EVALUATE ..."
    assert platform_ledger.totals().get("USD").amount == total
    nb = next(r for r in platform_ledger.records() if r.tags.get("fabric_item") == "transform_nb")
    assert (nb.x_dag_id, nb.x_task_id, nb.x_run_id) == ("sales_etl", "transform_nb", RUN)


def test_paused_capacity_costs_nothing(fabric, platform_ledger) -> None:
    fabric.capacity = capacity(state="Paused")
    res, _ = _collect(fabric, platform_ledger)
    assert res.records == [] and platform_ledger.count() == 0


def test_consumption_above_capacity_leaves_no_idle(fabric, platform_ledger) -> None:
    fabric.rows = [metrics_row("Sales", "big", "Lakehouse", "2026-03-01", 200_000)]  # > 172800 CU-s of an F2 day
    res, _ = _collect(fabric, platform_ledger)
    [idle] = [r for r in res.records if r.x_job_id == "(idle)"]
    assert idle.billed_cost == 0 and sum(r.billed_cost for r in res.records) == 2 * 24 * CU_HOUR


def test_running_intervals_bound_the_cost(fabric, platform_ledger) -> None:
    from finops_provider.hooks.fabric_costs import FabricCostHook

    hook: FabricCostHook = _hook(fabric)
    res = hook.collect(DAY, NEXT, metrics=ROWS[:1], running=[(DAY.replace(hour=8), DAY.replace(hour=14))], now=NEXT)
    assert sum(r.billed_cost for r in res.records) == 2 * 6 * CU_HOUR  # 6 h running of an F2


def test_estimate_superseded_by_truth(fabric, platform_ledger) -> None:
    from finops_provider.collect import CollectResult, ingest_collected

    task = task_try(task_id="transform_nb", minutes=20)
    est = _hook(fabric).estimate_run(task, cu_seconds=3000, item="transform_nb", operation_id="op-7")
    assert est.billed_cost == Decimal(3000) / 3600 * CU_HOUR and est.x_cost_kind == "estimate"
    ingest_collected(platform_ledger, FinOpsConfig(), CollectResult(records=[est], source="airflow-estimate"),
                     replace_window=False)  # fmt: skip
    _collect(fabric, platform_ledger)
    rep = reconcile(platform_ledger, DAY, NEXT)
    [t] = rep.tasks
    assert t.platform == "fabric" and t.truth.amount == CU_HOUR  # 3600 CU-seconds = 1 CU-hour
    assert t.error_pct == Decimal("-16.666667") and rep.superseded_rows == 1
    assert platform_ledger.totals().get("USD").amount == 2 * 24 * CU_HOUR  # truth only, no double count
