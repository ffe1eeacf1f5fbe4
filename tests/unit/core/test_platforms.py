"""Pure helpers of the platform hooks and the reconciliation step (no Airflow)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from finops_provider.core.estimate import TaskCostSpec, TaskTry, estimate
from finops_provider.core.ledger import Ledger
from finops_provider.core.money import Money
from finops_provider.core.platforms import label_value, parse_k8s_quantity, parse_tag_text, split_capacity
from finops_provider.core.pricing import RateCard
from finops_provider.core.reconcile import reconcile


@pytest.mark.parametrize(
    ("text", "value"),
    [
        pytest.param("250m", Decimal("0.25"), id="milli"),
        pytest.param("123456789n", Decimal("0.123456789"), id="nano"),
        pytest.param("1Gi", Decimal(2**30), id="gibi"),
        pytest.param("3145728Ki", Decimal(3 * 2**30), id="kibi"),
        pytest.param("1.5", Decimal("1.5"), id="plain"),
        pytest.param("1e3", Decimal(1000), id="exponent"),
        pytest.param("2M", Decimal(2_000_000), id="mega"),
    ],
)
def test_k8s_quantities_are_exact(text, value) -> None:
    assert parse_k8s_quantity(text) == value


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        pytest.param("scheduled__2026-03-01T00:00:00+00:00", "scheduled__2026-03-01t00_00_00_00_00", id="run-id"),
        pytest.param("Sales ETL", "sales_etl", id="space-caps"),
        pytest.param("-x-", "x", id="edges"),
    ],
)
def test_label_value(raw, safe) -> None:
    assert label_value(raw) == safe


def test_long_label_values_stay_distinct() -> None:
    a, b = label_value("x" * 80 + "a"), label_value("x" * 80 + "b")
    assert a != b and len(a) <= 63 and len(b) <= 63


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        pytest.param('{"airflow_dag_id": "d", "team": "t"}', {"airflow_dag_id": "d", "team": "t"}, id="json"),
        pytest.param("airflow_dag_id=d;team=t", {"airflow_dag_id": "d", "team": "t"}, id="semicolon"),
        pytest.param("nightly load", {"query_tag": "nightly load"}, id="free-text"),
    ],
)
def test_query_tags(text, tags) -> None:
    assert parse_tag_text(text) == tags


def test_capacity_split_conserves_the_total() -> None:
    total = Money(Decimal("100.00"), "USD")
    parts, idle = split_capacity(total, {"ws-a": Decimal(30), "ws-b": Decimal(10)}, Decimal(80))
    assert parts["ws-a"].amount == Decimal("37.5") and parts["ws-b"].amount == Decimal("12.5")
    assert idle.amount == Decimal(50)
    assert sum((p.amount for p in parts.values()), idle.amount) == total.amount


def test_estimate_in_another_currency_is_superseded_without_an_error(tmp_path, make_record) -> None:
    led = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    t = TaskTry("d", "t", "r", 1, dt.datetime(2024, 9, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 9, 1, 2, tzinfo=dt.UTC))
    est = estimate(t, TaskCostSpec(cost=Decimal(5), currency="EUR", platform="kubernetes"), RateCard.load())
    truth = make_record("4", x_dag_id="d", x_task_id="t", x_run_id="r", x_platform="kubernetes")
    led.ingest([est, truth], source="mixed")
    rep = reconcile(led, dt.datetime(2024, 9, 1, tzinfo=dt.UTC), dt.datetime(2024, 9, 2, tzinfo=dt.UTC))
    [task] = rep.tasks
    assert task.truth is None and task.error_pct is None and rep.accuracy == {}
    assert led.count(cost_kind="estimate") == 0  # truth exists: the estimate no longer counts
    assert led.totals().get("USD").amount == 4 and led.totals().get("EUR").amount == 0
