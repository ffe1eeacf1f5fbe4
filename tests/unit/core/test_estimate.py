"""Run-time estimates of task tries."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from finops_provider.core.estimate import TaskCostSpec, TaskTry, bigquery_on_demand_estimate, estimate
from finops_provider.core.pricing import RateCard

T0 = dt.datetime(2024, 9, 1, 12, tzinfo=dt.UTC)


def _try(seconds: float = 1800, **kw) -> TaskTry:  # type: ignore[no-untyped-def]
    return TaskTry(
        dag_id="d", task_id="t", run_id="r", try_number=2, start=T0, end=T0 + dt.timedelta(seconds=seconds), **kw
    )


def test_duration_times_rate_is_exact() -> None:
    spec = TaskCostSpec.from_mapping({"platform": "kubernetes", "sku": "cpu_core_hour", "quantity_per_hour": "4"})
    rec = estimate(_try(1800), spec, RateCard.load())
    assert rec.billed_cost == Decimal("0.031611") * 4 / 2  # 4 cores for half an hour
    assert rec.pricing_quantity == Decimal(2) and rec.pricing_unit == "core-hour"
    assert rec.x_cost_kind == "estimate" and rec.x_line_item_id == "d/r/t/-1/2"
    assert rec.x_dag_id == "d" and rec.x_job_id == "d" and rec.x_platform == "kubernetes"


def test_overrides_beat_the_shipped_price() -> None:
    card = RateCard.load([{"platform": "databricks", "sku": "JOBS_COMPUTE", "unit": "DBU", "price": "0.13"}])
    spec = TaskCostSpec.from_mapping({"platform": "databricks", "sku": "JOBS_COMPUTE", "quantity_per_hour": "8"})
    assert estimate(_try(3600), spec, card).billed_cost == Decimal("1.04")


def test_fixed_cost_and_attribution() -> None:
    spec = TaskCostSpec.from_mapping({"cost": "12.50", "currency": "eur", "team": "data"})
    rec = estimate(_try(5, cost_center="CC1"), spec, RateCard.load())
    assert (rec.billed_cost, rec.billing_currency, rec.x_team, rec.x_cost_center) == (
        Decimal("12.50"),
        "EUR",
        "data",
        "CC1",
    )


def test_same_try_same_identity() -> None:
    spec = TaskCostSpec()
    a, b = estimate(_try(10), spec, RateCard.load()), estimate(_try(10), spec, RateCard.load())
    assert a.identity() == b.identity()


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"cots": "1"}, id="typo"),
        pytest.param({"cost": "abc"}, id="nan"),
        pytest.param({"currency": "XX"}, id="cur"),
    ],
)
def test_bad_specs_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        TaskCostSpec.from_mapping(bad)


def test_bigquery_dry_run_estimate() -> None:
    assert bigquery_on_demand_estimate(2**40) == "6.25"
    assert Decimal(bigquery_on_demand_estimate(2**39)) == Decimal("3.125")
