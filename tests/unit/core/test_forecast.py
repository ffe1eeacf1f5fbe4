"""Period-end forecast with weekly seasonality, its breach ETA, and FORECASTED budget thresholds using it."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from finops_provider.core.budgets import BudgetEngine, burn_rate_forecast
from finops_provider.core.config import parse_config
from finops_provider.core.forecast import forecast_period_end, has_seasonal_history
from finops_provider.core.ledger import Ledger
from finops_provider.core.money import Money

D = Decimal
UTC = dt.UTC
SEPT = (dt.datetime(2024, 9, 1, tzinfo=UTC), dt.datetime(2024, 10, 1, tzinfo=UTC))


def _weekly(first: dt.date, last: dt.date, weekday: str = "100", weekend: str = "20") -> dict[dt.date, Decimal]:
    out, d = {}, first
    while d <= last:
        out[d] = D(weekend if d.weekday() >= 5 else weekday)
        d += dt.timedelta(days=1)
    return out


def _truth(daily: dict[dt.date, Decimal]) -> Decimal:
    return sum((v for d, v in daily.items() if SEPT[0].date() <= d < SEPT[1].date()), D(0))


@pytest.mark.parametrize("day", [pytest.param(d, id=f"day-{d}") for d in (7, 10, 14, 21)])
def test_weekly_pattern_is_projected_exactly(day: int) -> None:
    daily = _weekly(dt.date(2024, 7, 1), dt.date(2024, 9, 30))
    now = dt.datetime(2024, 9, day, tzinfo=UTC)
    known = {d: v for d, v in daily.items() if d < now.date()}
    fc, _ = forecast_period_end(known, *SEPT, now)
    assert isinstance(fc.amount, Decimal) and fc.currency == "USD"
    assert abs(fc.amount - _truth(daily)) < D("0.01")
    # the linear burn rate is off whenever the elapsed days have another weekday mix than the month
    spent = Money.of(sum((v for d, v in known.items() if d >= SEPT[0].date()), D(0)))
    lin = burn_rate_forecast(spent, *SEPT, now)
    assert abs(lin.amount - _truth(daily)) > D(10)


def test_breach_eta_follows_the_seasonal_path() -> None:
    daily = _weekly(dt.date(2024, 7, 1), dt.date(2024, 9, 9))  # known up to Monday 9 Sept (1 weekday so far)
    now = dt.datetime(2024, 9, 10, tzinfo=UTC)
    spent = sum((v for d, v in daily.items() if d >= SEPT[0].date()), D(0))  # 6 weekdays + 3 weekend days
    assert spent == D(660)
    # 1000 is reached after 340 more: Tue..Thu 10-12 Sept make 300, then 40 of Friday 13 Sept's 100
    _, eta = forecast_period_end(daily, *SEPT, now, limit=Money.of(1000))
    assert eta == dt.datetime(2024, 9, 13, 9, 36, tzinfo=UTC)
    _, never = forecast_period_end(daily, *SEPT, now, limit=Money.of(100000))
    assert never is None


def test_little_history_falls_back_to_the_linear_burn_rate() -> None:
    daily = {dt.date(2024, 9, d): D(10) for d in range(1, 11)}
    now = dt.datetime(2024, 9, 11, tzinfo=UTC)
    assert not has_seasonal_history(daily, now)
    fc, eta = forecast_period_end(daily, *SEPT, now, limit=Money.of(200))
    assert fc == burn_rate_forecast(Money.of(100), *SEPT, now) == Money.of(300)
    assert eta == dt.datetime(2024, 9, 21, tzinfo=UTC)


def test_other_currency_and_money_values() -> None:
    daily = {d: Money(v, "EUR") for d, v in _weekly(dt.date(2024, 7, 1), dt.date(2024, 9, 9)).items()}
    fc, _ = forecast_period_end(daily, *SEPT, dt.datetime(2024, 9, 10, tzinfo=UTC), currency="EUR")
    assert fc.currency == "EUR" and fc.amount == D(660) + 15 * 100 + 6 * 20


def test_budget_engine_uses_the_seasonal_forecast_with_history(ledger_url: str, make_record) -> None:
    cfg = parse_config(
        {
            "budgets": [
                {
                    "name": "data",
                    "scope": {"team": "data"},
                    "amount": "2000",
                    "thresholds": [{"pct": 100, "basis": "forecasted"}],
                },
                {"name": "web", "scope": {"team": "web"}, "amount": "2000"},
            ]
        }
    )
    rows = []
    for day, cost in _weekly(dt.date(2024, 8, 1), dt.date(2024, 9, 14)).items():
        rows.append(make_record(cost, day=(day - dt.date(2024, 9, 1)).days, x_team="data"))
    rows.append(make_record("50", day=2, x_team="web"))  # one day of history: linear
    now = dt.datetime(2024, 9, 15, tzinfo=UTC)
    with Ledger(ledger_url) as led:
        led.ingest(rows, source="t")
        st = {s.budget.name: s for s in BudgetEngine(cfg, led).evaluate_all(now)}
    data, web = st["data"], st["web"]
    truth = _truth(_weekly(dt.date(2024, 8, 1), dt.date(2024, 9, 30)))
    assert data.forecast_model == "seasonal" and abs(data.forecast.amount - truth) < D("0.01")
    assert [(b.basis, b.threshold_pct) for b in data.breaches] == [("forecasted", D(100))]
    j = data.to_json(now)
    assert j["forecast_model"] == "seasonal" and j["breach_eta"] is not None
    assert dt.datetime.fromisoformat(j["breach_eta"]) < SEPT[1]
    assert web.forecast_model == "linear" and web.forecast == burn_rate_forecast(Money.of(50), *SEPT, now)
