"""SnowflakeCostHook through the real SnowflakeHook and connector, answered by fakesnow.

The ACCOUNT_USAGE views are created and seeded by the fixture (fakesnow has none); the hook's SQL runs unchanged.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.reconcile import estimate_errors, reconcile
from tests.fixtures.platforms import task_try

UTC = dt.UTC
DAY = dt.datetime(2026, 3, 1, tzinfo=UTC)
NEXT = DAY + dt.timedelta(days=1)
TAG = json.dumps(
    {
        "airflow_dag_id": "sales_etl",
        "airflow_task_id": "load",
        "airflow_run_id": "scheduled__2026-03-01T00:00:00+00:00",
        "team": "data-eng",
        "cost_center": "CC-100",
    }
)
Q0, Q1, Q2, Q3, Q4 = (f"01b2c3d4-0000-4a5b-0000-00000000000{i}" for i in range(5))
OTHER_TAG = "airflow_dag_id=ml_train;airflow_task_id=features;airflow_run_id=manual__1"


def _seed(seed) -> None:
    t = "2026-03-01 10:05:00"
    seed(
        "QUERY_ATTRIBUTION_HISTORY",
        [
            (Q1, None, None, 1, "TRANSFORM_WH", "h1", "p1", TAG, "AIRFLOW", t, "2026-03-01 10:20:00",
             Decimal("0.8"), None),
            (Q2, None, None, 1, "TRANSFORM_WH", "h2", "p2", TAG, "AIRFLOW", t, "2026-03-01 10:25:00",
             Decimal("0.9"), Decimal("0.05")),
            (Q3, None, None, 1, "TRANSFORM_WH", "h3", "p3", OTHER_TAG, "AIRFLOW", t, "2026-03-01 10:09:00",
             Decimal("0.45"), None),
            # the next day: outside the window
            (Q4, None, None, 1, "TRANSFORM_WH", "h4", "p4", TAG, "AIRFLOW", "2026-03-02 01:00:00",
             "2026-03-02 01:10:00", Decimal("7"), None),
        ],
    )  # fmt: skip
    seed(
        "WAREHOUSE_METERING_HISTORY",
        [
            ("2026-03-01 10:00:00", "2026-03-01 11:00:00", 1, "TRANSFORM_WH", Decimal("3.1"), Decimal("3.0"),
             Decimal("0.1"), Decimal("2.2")),
            ("2026-03-01 11:00:00", "2026-03-01 12:00:00", 1, "TRANSFORM_WH", Decimal("0.5"), Decimal("0.5"),
             Decimal("0"), Decimal("0")),
        ],
    )  # fmt: skip
    seed(
        "QUERY_HISTORY",
        [
            (Q1, "insert ...", TAG, 1, "TRANSFORM_WH", "Medium", "STANDARD", t, "2026-03-01 10:20:00",
             900_500, 500, 900_000, 0),
            (Q2, "merge ...", TAG, 1, "TRANSFORM_WH", "Medium", "STANDARD", t, "2026-03-01 10:25:00",
             900_000, 0, 900_000, 0),
            (Q0, "show tables", TAG, None, None, None, None, t, t, 40, 40, 0, 0),
        ],
    )  # fmt: skip


def _hook(**kw):
    from finops_provider.hooks.snowflake_costs import SnowflakeCostHook

    return SnowflakeCostHook(snowflake_conn_id="snowflake_default", **kw)


@pytest.mark.parametrize(
    ("edition", "price"),
    [pytest.param("ENTERPRISE", Decimal(3), id="enterprise"), pytest.param("STANDARD", Decimal(2), id="standard")],
)
def test_truth_by_query_tag_and_idle_row(snowflake_account_usage, platform_ledger, edition, price) -> None:
    _seed(snowflake_account_usage)
    from finops_provider.hooks.snowflake_costs import collect_snowflake

    res, ing = collect_snowflake(platform_ledger, FinOpsConfig(), DAY, NEXT, edition=edition)
    by_task = {(r.x_dag_id, r.x_task_id): r for r in res.records if r.x_dag_id}
    load = by_task[("sales_etl", "load")]
    assert load.pricing_quantity == Decimal("1.75")  # 0.8 + 0.9 + 0.05 query acceleration
    assert load.billed_cost == Decimal("1.75") * price
    assert (load.x_run_id, load.x_team, load.x_cost_center) == (
        "scheduled__2026-03-01T00:00:00+00:00",
        "data-eng",
        "CC-100",
    )
    assert by_task[("ml_train", "features")].billed_cost == Decimal("0.45") * price  # k=v;k=v tags parse too
    idle = [r for r in res.records if r.tags.get("finops_idle")]
    assert len(idle) == 1 and idle[0].pricing_quantity == Decimal("1.3")  # (3.0 - 2.2) + (0.5 - 0)
    assert idle[0].x_job_id == "(idle)" and idle[0].resource_id == "TRANSFORM_WH"
    assert platform_ledger.totals().get("USD").amount == (Decimal("1.75") + Decimal("0.45") + Decimal("1.3")) * price
    assert ing.inserted == 3
    _, again = collect_snowflake(platform_ledger, FinOpsConfig(), DAY, NEXT, edition=edition)
    assert (again.inserted, again.unchanged) == (0, 3)  # re-collection restates, never adds


def test_estimate_is_superseded_by_truth_and_error_recorded(snowflake_account_usage, platform_ledger) -> None:
    _seed(snowflake_account_usage)
    from finops_provider.collect import CollectResult, ingest_collected
    from finops_provider.hooks.snowflake_costs import collect_snowflake

    hook = _hook()
    task = task_try()
    est = hook.estimate_run(task, query_tag=TAG)  # 2 Medium queries x 4 credits/h x 15 min = 2 credits
    assert est.x_cost_kind == "estimate" and est.pricing_quantity == Decimal(2)
    assert est.billed_cost == Decimal(6) and est.x_line_item_id == f"sales_etl/{task.run_id}/load/-1/1"
    by_id = hook.estimate_run(task, query_ids=[Q1, Q2])
    assert by_id.billed_cost == est.billed_cost
    pending = task_try(task_id="never_billed")
    ingest_collected(
        platform_ledger,
        FinOpsConfig(),
        CollectResult(records=[est, hook.estimate_run(pending, query_tag=TAG)], source="airflow-estimate"),
        replace_window=False,
    )
    assert platform_ledger.totals().get("USD").amount == Decimal(12)

    collect_snowflake(platform_ledger, FinOpsConfig(), DAY, NEXT)
    rep = reconcile(platform_ledger, DAY, NEXT)
    assert (rep.superseded_rows, rep.pending_rows) == (1, 1)
    [t] = rep.tasks
    assert (t.estimate.amount, t.truth.amount) == (Decimal(6), Decimal("5.25"))
    assert t.error_pct == Decimal("14.285714")  # (6 - 5.25) / 5.25
    acc = rep.accuracy[("snowflake", "USD")]
    assert acc.tasks == 1 and acc.bias_pct == Decimal("14.285714")
    # active totals: truth (5.25 + 1.35 + 3.9 idle) + the estimate that has no truth yet (6), never both
    assert platform_ledger.totals().get("USD").amount == Decimal("5.25") + Decimal("1.35") + Decimal("3.9") + 6
    assert platform_ledger.count(cost_kind="estimate") == 1
    [kept] = estimate_errors(platform_ledger, platform="snowflake")
    assert kept["estimate"] == Decimal(6) and kept["truth"] == Decimal("5.25")
    assert reconcile(platform_ledger, DAY, NEXT).superseded_rows == 0  # idempotent


def test_estimate_rejects_text_that_is_not_a_query_id(snowflake_account_usage) -> None:
    with pytest.raises(ValueError, match="not Snowflake query ids"):
        _hook().estimate_run(task_try(), query_ids=["x'); DROP TABLE t; --"])
