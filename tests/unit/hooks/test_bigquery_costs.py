"""BigQueryCostHook: JOBS SQL on a DuckDB copy of INFORMATION_SCHEMA.JOBS; dry runs against a local REST server."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.reconcile import reconcile
from tests.fixtures.bigquery import bigquery_client, dry_run_response
from tests.fixtures.platforms import task_try

UTC = dt.UTC
DAY = dt.datetime(2026, 3, 1, tzinfo=UTC)
NEXT = DAY + dt.timedelta(days=1)
RUN = "scheduled__2026-03-01T00:00:00+00:00"
LABELS = {"airflow_dag_id": "sales_etl", "airflow_task_id": "aggregate",
          "airflow_run_id": "scheduled__2026-03-01t00_00_00_00_00",
          "team": "analytics"}  # fmt: skip
TIB = 2**40


def _seed(v) -> None:
    v.job("2026-03-01 10:00:00+00", bytes_billed=2 * TIB, labels=LABELS)
    v.job("2026-03-01 10:05:00+00", bytes_billed=TIB // 2, labels=LABELS)
    v.job("2026-03-01 10:06:00+00", bytes_billed=10 * TIB, labels=LABELS, statement_type="SCRIPT")  # parent
    v.job("2026-03-01 11:00:00+00", slot_ms=7_200_000, reservation="acme:US.etl", labels={"team": "ml"})
    v.job("2026-03-01 12:00:00+00", bytes_billed=TIB, job_type="LOAD")
    v.job("2026-03-02 00:00:00+00", bytes_billed=TIB, labels=LABELS)  # next day


def _hook(v, **kw):
    from finops_provider.hooks.bigquery_costs import BigQueryCostHook

    return BigQueryCostHook(jobs_view="region_us.jobs", connection=v.conn, **kw)


def test_on_demand_bytes_and_editions_slots(bigquery_jobs, platform_ledger) -> None:
    _seed(bigquery_jobs)
    from finops_provider.hooks.bigquery_costs import collect_bigquery

    res, _ = collect_bigquery(platform_ledger, FinOpsConfig(), DAY, NEXT, hook=_hook(bigquery_jobs))
    [od] = [r for r in res.records if r.sku_id == "ON_DEMAND_TIB"]
    assert od.pricing_quantity == Decimal("2.5") and od.billed_cost == Decimal("2.5") * Decimal("6.25")
    assert (od.x_dag_id, od.x_task_id, od.x_team) == ("sales_etl", "aggregate", "analytics")
    [ed] = [r for r in res.records if r.sku_id == "ENTERPRISE_SLOT_HOUR"]
    assert (
        ed.pricing_quantity == 2 and ed.billed_cost == 2 * Decimal("0.06") and "approximation" in ed.charge_description
    )
    assert platform_ledger.totals().get("USD").amount == Decimal("15.625") + Decimal("0.12")  # script/load skipped


def test_dry_run_estimate_superseded_by_truth(bigquery_jobs, httpserver, platform_ledger) -> None:
    _seed(bigquery_jobs)
    httpserver.expect_request("/bigquery/v2/projects/acme-analytics/jobs", method="POST").respond_with_json(
        dry_run_response(3 * TIB)
    )
    from finops_provider.collect import CollectResult, ingest_collected
    from finops_provider.hooks.bigquery_costs import collect_bigquery

    hook = _hook(bigquery_jobs, client=bigquery_client(httpserver))
    processed, cost = hook.dry_run("select * from sales.orders", on=DAY.date())
    assert processed == 3 * TIB and cost.amount == Decimal("18.75")  # usable by a budget gate before the query runs
    task = task_try(task_id="aggregate", run_id=RUN)  # labels hold its label-safe form
    est = hook.estimate_run(task, sql="select * from sales.orders")
    assert est.billed_cost == Decimal("18.75") and est.x_cost_kind == "estimate"
    ingest_collected(platform_ledger, FinOpsConfig(), CollectResult(records=[est], source="airflow-estimate"),
                     replace_window=False)  # fmt: skip
    collect_bigquery(platform_ledger, FinOpsConfig(), DAY, NEXT, hook=hook)
    rep = reconcile(platform_ledger, DAY, NEXT)
    [t] = rep.tasks
    assert t.run_id == RUN  # the estimate's exact id is kept
    assert t.truth.amount == Decimal("15.625") and t.error_pct == Decimal("20.000000")
    assert rep.accuracy[("bigquery", "USD")].mean_abs_error_pct == Decimal("20.000000")
    assert platform_ledger.count(cost_kind="estimate") == 0
