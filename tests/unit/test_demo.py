"""The demo month: per-platform run-time estimates with billed truth, idle rows, and their reconciliation."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from finops_provider import demo
from finops_provider.core.ledger import Ledger
from finops_provider.core.money import MoneyBag
from finops_provider.core.reconcile import _key

PLATFORMS = {"databricks", "snowflake", "bigquery", "redshift", "kubernetes", "synapse", "fabric"}


@pytest.fixture(scope="module")
def data() -> demo.DemoData:
    return demo.generate(infra_resources=2)


def test_estimates_per_platform_each_with_truth(data: demo.DemoData) -> None:
    ests = data.estimates
    assert Counter(e.x_platform for e in ests) == {p: len(demo.ESTIMATE_DAYS_BEFORE_END) for p in PLATFORMS}
    truth_keys = {
        _key(r.x_dag_id, r.x_task_id, r.x_run_id, r.x_platform) for r in data.records if r.x_cost_kind == "billed"
    }
    for e in ests:
        assert e.x_source == "airflow-estimate" and e.x_line_item_id == f"{e.x_dag_id}/{e.x_run_id}/task_1/-1/1"
        assert _key(e.x_dag_id, e.x_task_id, e.x_run_id, e.x_platform) in truth_keys
        assert e.x_dag_id != demo.SPIKE_DAG and e.charge_period_start.date() < (demo.DEMO_NOW.date())


def test_idle_rows_and_exact_expectations(data: demo.DemoData) -> None:
    idle = [r for r in data.records if r.x_job_id == "(idle)"]
    assert Counter(r.x_platform for r in idle) == {p: demo.DEMO_DAYS for p in ("snowflake", "kubernetes", "fabric")}
    assert all(r.billed_cost >= 0 and r.tags == {"finops_idle": "true"} for r in idle)
    everything, billed = MoneyBag(), MoneyBag()
    for r in data.records:
        everything.add_raw(r.billed_cost, r.billing_currency)
        if r.x_cost_kind == "billed":
            billed.add_raw(r.billed_cost, r.billing_currency)
    assert data.expected == everything and data.expected_after_reconcile == billed
    assert data.expected != data.expected_after_reconcile  # estimates are counted until reconciled


def test_deterministic(data: demo.DemoData) -> None:
    again = demo.generate(infra_resources=2)
    assert [(r.identity(), r.billed_cost) for r in again.records] == [
        (r.identity(), r.billed_cost) for r in data.records
    ]


def test_reconcile_demo_reports_accuracy_per_platform(data: demo.DemoData, tmp_path: Path) -> None:
    with Ledger(f"sqlite:///{tmp_path / 'demo.db'}") as led:
        led.ingest(data.records, source="demo")
        assert led.totals() == data.expected
        rep = demo.reconcile_demo(led)
        assert rep.superseded_rows == len(data.estimates) and rep.pending_rows == 0
        assert led.totals() == data.expected_after_reconcile  # truth only, never estimate + truth
        assert {p for p, _ in rep.accuracy} == PLATFORMS
        for (platform, _cur), acc in rep.accuracy.items():
            dag = next(e.x_dag_id for e in data.estimates if e.x_platform == platform)
            lo, hi = demo.ESTIMATED_DAGS[dag]
            assert acc.tasks == len(demo.ESTIMATE_DAYS_BEFORE_END)
            assert Decimal(lo) / 10 <= acc.bias_pct <= Decimal(hi) / 10, platform  # the injected error, per mille
        assert demo.reconcile_demo(led).superseded_rows == 0  # idempotent


def test_estimates_before_the_anomaly_day(data: demo.DemoData) -> None:
    last_day = demo.DEMO_NOW - dt.timedelta(days=1)
    assert not [e for e in data.estimates if e.charge_period_start >= last_day]
