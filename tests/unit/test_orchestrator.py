"""The seed's FinOpsOrchestrator against moto's Cost Explorer (via the AWS hook) and a real SQLite ledger."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.ledger import Ledger
from finops_provider.orchestrator import FinOpsOrchestrator
from tests.fixtures.aws import ce_period


def _days(n: int, daily: list[str], tag: str = "app$manufacturing-etl") -> dict:
    start = dt.date(2026, 10, 1)
    periods = []
    for i in range(n):
        d0 = start + dt.timedelta(days=i)
        periods.append(
            ce_period(
                d0.isoformat(), (d0 + dt.timedelta(days=1)).isoformat(), [([tag, "Amazon EMR"], daily[i], daily[i])]
            )
        )
    return {"ResultsByTime": periods}


def _orch(tmp_path, budget: float | str = 100.0, **kw) -> FinOpsOrchestrator:
    return FinOpsOrchestrator(
        job_id="manufacturing-etl",
        job_budget_usd=budget,
        anomaly_threshold_pct=150,
        cost_center="SBE",
        ledger=Ledger(f"sqlite:///{tmp_path / 'l.db'}"),
        config=FinOpsConfig(),
        **kw,
    )


def test_seed_example_flow(moto_ce, tmp_path) -> None:
    daily = ["3.10", "2.90", "3.00", "3.05", "2.95", "3.00", "3.10", "2.90", "3.00", "14.20"]  # spike on day 10
    moto_ce([_days(10, daily)])
    o = _orch(tmp_path)
    got = o.collect_batch_costs(
        aws_tag_key="app", aws_tag_value="manufacturing-etl", start="2026-10-01", end="2026-10-11"
    )
    assert got["rows"] == 10 and got["requests"] == 1
    s = o.get_executive_summary(now=dt.datetime(2026, 10, 11, tzinfo=dt.UTC))
    assert s["job_id"] == "manufacturing-etl" and s["cost_center"] == "SBE"
    assert Decimal(s["total_cost"]["amount"]) == sum(Decimal(x) for x in daily)
    assert s["total_cost"] == {"amount": "41.2", "currency": "USD"}
    assert s["budget"] == {"amount": "100", "currency": "USD"}
    assert s["budget_utilisation_pct"] == "41.20"
    assert s["breach_status"] == "ok"
    assert s["anomaly"] is True
    a = s["anomalies"][0]
    assert a["scope"] == {"job": "manufacturing-etl"} and a["actual"]["amount"] == "14.2"
    assert a["expected"]["amount"] == "3"


def test_recollecting_never_double_counts_and_breaches(moto_ce, tmp_path) -> None:
    daily = ["30", "30", "30", "30"]
    moto_ce([_days(4, daily)])
    o = _orch(tmp_path, budget="100")
    for _ in range(3):
        o.collect_batch_costs(
            aws_tag_key="app", aws_tag_value="manufacturing-etl", start="2026-10-01", end="2026-10-05"
        )
    s = o.get_executive_summary(now=dt.datetime(2026, 10, 5, tzinfo=dt.UTC))
    assert s["total_cost"]["amount"] == "120"
    assert s["breach_status"] == "breached"
    assert s["thresholds_crossed_pct"] == ["80", "100"]
    assert s["anomaly"] is False
    assert o.ledger.count(job_id="manufacturing-etl") == 4


def test_other_jobs_spend_is_not_counted(moto_ce, tmp_path) -> None:
    moto_ce([_days(2, ["5", "5"], tag="app$other-job")])
    o = _orch(tmp_path)
    o.collect_batch_costs(aws_tag_key="app", aws_tag_value="manufacturing-etl", start="2026-10-01", end="2026-10-03")
    s = o.get_executive_summary(now=dt.datetime(2026, 10, 3, tzinfo=dt.UTC))
    # moto ignores the tag Filter, like a misconfigured tag would: rows of another tag value must not be
    # attributed to this job (they keep their own owner from the tag)
    assert s["total_cost"]["amount"] == "0"
    assert o.ledger.totals(job_id="other-job").get("USD").amount == Decimal("10")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"job_id": ""}, "job_id", id="empty-job"),
        pytest.param({"job_budget_usd": 0}, "job_budget_usd", id="zero-budget"),
        pytest.param({"job_budget_usd": "abc"}, "job_budget_usd", id="bad-budget"),
    ],
)
def test_constructor_validates(tmp_path, kwargs, message) -> None:
    base = {"job_id": "j", "job_budget_usd": 10}
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        FinOpsOrchestrator(**base, ledger=Ledger(f"sqlite:///{tmp_path / 'l.db'}"), config=FinOpsConfig())
