"""DatabricksCostHook: system.billing SQL on a DuckDB copy of the documented tables; Jobs API on a local server."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.reconcile import reconcile
from tests.fixtures.platforms import task_try

UTC = dt.UTC
DAY = dt.datetime(2026, 3, 1, tzinfo=UTC)
NEXT = DAY + dt.timedelta(days=1)
RUN = "scheduled__2026-03-01T00:00:00+00:00"
TAGS = {"airflow_dag_id": "sales_etl", "airflow_task_id": "spark_job", "airflow_run_id": RUN, "team": "data-eng"}


def _seed(st) -> None:
    # the list price changes at noon: usage ending before noon is priced 0.15, after it 0.16
    st.price("PREMIUM_JOBS_COMPUTE", "0.15", "2024-01-01 00:00:00", "2026-03-01 12:00:00")
    st.price("PREMIUM_JOBS_COMPUTE", "0.17", "2026-03-01 12:00:00", effective="0.16")
    run = {"tags": TAGS, "job_id": "111", "job_run_id": "9001"}
    st.usage("PREMIUM_JOBS_COMPUTE", "10", "2026-03-01 10:00:00", "2026-03-01 11:00:00", **run)
    st.usage("PREMIUM_JOBS_COMPUTE", "4", "2026-03-01 12:00:00", "2026-03-01 13:00:00", **run)
    # Databricks corrects the first hour: a retraction of the original and a restatement of 8 DBU
    st.usage("PREMIUM_JOBS_COMPUTE", "-10", "2026-03-01 10:00:00", "2026-03-01 11:00:00", record_type="RETRACTION",
             **run)  # fmt: skip
    st.usage("PREMIUM_JOBS_COMPUTE", "8", "2026-03-01 10:00:00", "2026-03-01 11:00:00", record_type="RESTATEMENT",
             **run)  # fmt: skip
    # no list price row: priced from the rate card (ALL_PURPOSE_COMPUTE 0.55), unattributed
    st.usage("PREMIUM_ALL_PURPOSE_COMPUTE", "2", "2026-03-01 09:00:00", "2026-03-01 10:00:00", product="ALL_PURPOSE")
    # unknown SKU and no price anywhere: quarantined, not guessed
    st.usage("PREMIUM_MODEL_SERVING_GPU", "1", "2026-03-01 09:00:00", "2026-03-01 10:00:00", product="MODEL_SERVING")
    st.usage("PREMIUM_JOBS_COMPUTE", "99", "2026-03-02 09:00:00", "2026-03-02 10:00:00", **run)  # next day


def _hook(st):
    from finops_provider.hooks.databricks_costs import DatabricksCostHook

    return DatabricksCostHook(catalog_name="system_copy", connection=st.conn)


def test_signed_records_price_window_and_tags(databricks_system_tables, platform_ledger) -> None:
    _seed(databricks_system_tables)
    from finops_provider.hooks.databricks_costs import collect_databricks

    res, ing = collect_databricks(platform_ledger, FinOpsConfig(), DAY, NEXT, hook=_hook(databricks_system_tables))
    job = [r for r in res.records if r.x_dag_id == "sales_etl"]
    assert len(job) == 1
    [j] = job
    assert j.pricing_quantity == Decimal(12)  # 10 + 4 - 10 + 8
    assert j.billed_cost == 8 * Decimal("0.15") + 4 * Decimal("0.16")  # effective list price in force
    assert j.list_cost == 8 * Decimal("0.15") + 4 * Decimal("0.17")
    assert (j.x_task_id, j.x_run_id, j.x_team) == ("spark_job", RUN, "data-eng")
    assert j.tags["databricks_job_run_id"] == "9001"
    [ap] = [r for r in res.records if r.sku_id == "PREMIUM_ALL_PURPOSE_COMPUTE"]
    assert ap.billed_cost == Decimal("1.10") and "rate card" in ap.charge_description and ap.x_dag_id is None
    assert ing.quarantined == 1 and "PREMIUM_MODEL_SERVING_GPU" in platform_ledger.quarantined()[0]["reason"]
    assert platform_ledger.totals().get("USD").amount == Decimal("1.84") + Decimal("1.10")


def _run_json(start_ms: int) -> dict:
    half_hour = 30 * 60 * 1000
    return {
        "job_id": 111,
        "run_id": 9001,
        "state": {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS"},
        "start_time": start_ms,
        "end_time": start_ms + 2 * half_hour,
        "tasks": [
            {"task_key": "transform", "run_id": 9002, "start_time": start_ms, "end_time": start_ms + half_hour,
             "new_cluster": {"spark_version": "15.4.x-scala2.12", "node_type_id": "i3.xlarge", "num_workers": 4}},
            {"task_key": "report", "run_id": 9003, "job_cluster_key": "shared", "start_time": start_ms + half_hour,
             "end_time": start_ms + 2 * half_hour},
        ],
        "job_clusters": [
            {"job_cluster_key": "shared", "new_cluster": {"spark_version": "15.4.x-scala2.12",
             "node_type_id": "m5.xlarge", "autoscale": {"min_workers": 1, "max_workers": 2}}}
        ],
    }  # fmt: skip


def test_estimate_from_jobs_run_superseded_by_truth(databricks_system_tables, databricks_api, platform_ledger) -> None:
    _seed(databricks_system_tables)
    start_ms = int(dt.datetime(2026, 3, 1, 10, tzinfo=UTC).timestamp() * 1000)
    databricks_api.expect_request("/api/2.2/jobs/runs/get", query_string="run_id=9001").respond_with_json(
        _run_json(start_ms)
    )
    from finops_provider.collect import CollectResult, ingest_collected
    from finops_provider.hooks.databricks_costs import collect_databricks

    hook = _hook(databricks_system_tables)
    task = task_try(task_id="spark_job", run_id=RUN, minutes=60)
    est = hook.estimate_run(task, run_id=9001)
    dbus = (4 * 1 + 1) * Decimal("0.5") + (2 * Decimal("0.69") + Decimal("0.69")) * Decimal("0.5")
    assert est.pricing_quantity == dbus
    assert est.billed_cost == dbus * Decimal("0.15") and est.x_cost_kind == "estimate"
    ingest_collected(platform_ledger, FinOpsConfig(), CollectResult(records=[est], source="airflow-estimate"),
                     replace_window=False)  # fmt: skip
    collect_databricks(platform_ledger, FinOpsConfig(), DAY, NEXT, hook=hook)
    rep = reconcile(platform_ledger, DAY, NEXT)
    [t] = rep.tasks
    assert t.truth.amount == Decimal("1.84") and t.platform == "databricks"
    assert t.error_pct == ((est.billed_cost - Decimal("1.84")) / Decimal("1.84") * 100).quantize(Decimal("0.000001"))
    assert platform_ledger.totals().get("USD").amount == Decimal("1.84") + Decimal("1.10")


@pytest.mark.parametrize(
    ("sku", "expected"),
    [
        pytest.param("PREMIUM_JOBS_COMPUTE", "JOBS_COMPUTE", id="jobs"),
        pytest.param("ENTERPRISE_ALL_PURPOSE_COMPUTE_(PHOTON)", "ALL_PURPOSE_COMPUTE", id="photon"),
        pytest.param("PREMIUM_SERVERLESS_SQL_COMPUTE_US_EAST_N_VIRGINIA", "SQL_SERVERLESS", id="sql-serverless"),
        pytest.param("PREMIUM_SQL_PRO_COMPUTE_US_EAST", "SQL_PRO", id="sql-pro"),
        pytest.param("PREMIUM_MODEL_SERVING", None, id="unknown"),
    ],
)
def test_rate_card_sku_mapping(sku, expected) -> None:
    from finops_provider.hooks.databricks_costs import rate_card_sku

    assert rate_card_sku(sku) == expected
