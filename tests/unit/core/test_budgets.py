"""Budgets: calendar periods, burn-rate forecast, graded thresholds, stable dedupe keys, ledger-backed spend."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction

import pytest

from finops_provider.core.budgets import (
    BudgetEngine,
    breach_eta,
    burn_rate_forecast,
    evaluate,
    pct,
    period_bounds,
)
from finops_provider.core.config import BudgetConfig, parse_config
from finops_provider.core.ledger import Ledger
from finops_provider.core.money import Money

UTC = dt.UTC


def _t(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


# ------------------------------------------------------------------ periods
@pytest.mark.parametrize(
    ("period", "at", "start", "end"),
    [
        pytest.param("day", _t(2024, 9, 15, 13, 5), _t(2024, 9, 15), _t(2024, 9, 16), id="day"),
        pytest.param("day", _t(2024, 12, 31, 23, 59, 59), _t(2024, 12, 31), _t(2025, 1, 1), id="day-new-year"),
        pytest.param("week", _t(2024, 9, 15, 12), _t(2024, 9, 9), _t(2024, 9, 16), id="week-sunday"),
        pytest.param("week", _t(2024, 9, 9), _t(2024, 9, 9), _t(2024, 9, 16), id="week-monday-midnight"),
        pytest.param("week", _t(2025, 1, 1), _t(2024, 12, 30), _t(2025, 1, 6), id="week-across-years"),
        pytest.param("month", _t(2024, 9, 15), _t(2024, 9, 1), _t(2024, 10, 1), id="month"),
        pytest.param("month", _t(2024, 12, 31, 23), _t(2024, 12, 1), _t(2025, 1, 1), id="december-to-january"),
        pytest.param("month", _t(2024, 2, 29, 12), _t(2024, 2, 1), _t(2024, 3, 1), id="leap-february"),
        pytest.param("month", _t(2023, 2, 28), _t(2023, 2, 1), _t(2023, 3, 1), id="plain-february"),
        pytest.param("month", _t(2024, 1, 31), _t(2024, 1, 1), _t(2024, 2, 1), id="january-31"),
    ],
)
def test_period_bounds(period: str, at: dt.datetime, start: dt.datetime, end: dt.datetime) -> None:
    assert period_bounds(period, at) == (start, end)


def test_period_bounds_use_utc() -> None:
    # 2024-10-01T01:00 in UTC-3 is 2024-10-01T04:00Z: October, not September
    at = dt.datetime(2024, 10, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-3)))
    assert period_bounds("month", at) == (_t(2024, 10, 1), _t(2024, 11, 1))
    # 2024-10-01T01:00 in UTC+3 is 2024-09-30T22:00Z: still September
    at = dt.datetime(2024, 10, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=3)))
    assert period_bounds("month", at) == (_t(2024, 9, 1), _t(2024, 10, 1))


def test_run_period_has_no_calendar_bounds() -> None:
    with pytest.raises(ValueError, match="period 'run' has no calendar bounds"):
        period_bounds("run", _t(2024, 9, 1))


# ----------------------------------------------------------------- forecast
@pytest.mark.parametrize(
    ("actual", "now", "expected"),
    [
        pytest.param("100", _t(2024, 9, 11), "300", id="a-third-of-the-month"),
        pytest.param("100", _t(2024, 9, 16), "200", id="half"),
        pytest.param("0.01", _t(2024, 9, 1, 1), "7.20", id="first-hour"),
        pytest.param("100", _t(2024, 10, 1), "100", id="period-over"),
        pytest.param("100", _t(2024, 9, 1), "100", id="no-time-elapsed"),
        pytest.param("0", _t(2024, 9, 20), "0", id="nothing-spent"),
    ],
)
def test_burn_rate_forecast(actual: str, now: dt.datetime, expected: str) -> None:
    got = burn_rate_forecast(Money.of(actual), _t(2024, 9, 1), _t(2024, 10, 1), now)
    assert got == Money.of(expected)


def test_breach_eta() -> None:
    # 250 spent in 5 days of a 1000 budget: reaches 1000 after 20 days
    assert breach_eta(Money.of("250"), Money.of("1000"), _t(2024, 9, 1), _t(2024, 9, 6)) == _t(2024, 9, 21)
    assert breach_eta(Money.of("1000"), Money.of("1000"), _t(2024, 9, 1), _t(2024, 9, 6)) is None
    assert breach_eta(Money.of("0"), Money.of("1000"), _t(2024, 9, 1), _t(2024, 9, 6)) is None


def test_pct_rounds_half_even() -> None:
    assert pct(Decimal("1"), Decimal("3")) == Decimal("33.33")
    assert pct(Decimal("0.12345"), Decimal("1")) == Decimal("12.34")
    assert pct(Decimal("0.12355"), Decimal("1")) == Decimal("12.36")
    assert pct(Decimal("5"), Decimal("0")) == Decimal("0")


# --------------------------------------------------------------- thresholds
GRADED = BudgetConfig(
    name="data-monthly",
    scope={"team": "data"},
    amount=Decimal("1000"),
    thresholds=[
        {"pct": 50, "actions": ["notify"]},
        {"pct": 80, "actions": ["notify"]},
        {"pct": 100, "actions": ["notify", "ticket"]},
        {"pct": 120, "actions": ["incident"]},
        {"pct": 100, "actions": ["notify"], "basis": "forecasted"},
        {"pct": 120, "actions": ["approval"], "basis": "forecasted"},
    ],
)
SEPT = (_t(2024, 9, 1), _t(2024, 10, 1))
DAY_11 = _t(2024, 9, 11)  # 10 of 30 days elapsed: forecast = 3 x actual


@pytest.mark.parametrize(
    ("actual", "expected"),
    [
        pytest.param("100", [], id="nothing"),
        pytest.param("333.33", [], id="forecast-just-below-100"),
        pytest.param("333.34", [("100", "forecasted")], id="forecast-100"),
        pytest.param("499.99", [("100", "forecasted"), ("120", "forecasted")], id="actual-just-below-50"),
        pytest.param("500", [("50", "actual"), ("100", "forecasted"), ("120", "forecasted")], id="actual-exactly-50"),
        pytest.param(
            "800", [("50", "actual"), ("80", "actual"), ("100", "forecasted"), ("120", "forecasted")], id="actual-80"
        ),
        pytest.param(
            "1000.00",
            [("50", "actual"), ("80", "actual"), ("100", "actual"), ("100", "forecasted"), ("120", "forecasted")],
            id="actual-100",
        ),
        pytest.param(
            "1200",
            [
                ("50", "actual"),
                ("80", "actual"),
                ("100", "actual"),
                ("120", "actual"),
                ("100", "forecasted"),
                ("120", "forecasted"),
            ],
            id="actual-120",
        ),
    ],
)
def test_thresholds_crossed_on_actual_and_forecast(actual: str, expected: list[tuple[str, str]]) -> None:
    st = evaluate(GRADED, Money.of(actual), period_start=SEPT[0], period_end=SEPT[1], now=DAY_11)
    assert st.forecast == Money.of(actual) * 3
    assert [(str(b.threshold_pct), b.basis) for b in st.breaches] == expected


def test_breach_carries_actions_and_utilisation() -> None:
    st = evaluate(GRADED, Money.of("850"), period_start=SEPT[0], period_end=SEPT[1], now=DAY_11)
    by_key = {(b.threshold_pct, b.basis): b for b in st.breaches}
    assert by_key[(Decimal(120), "forecasted")].actions == ("approval",)
    assert by_key[(Decimal(80), "actual")].utilisation_pct == Decimal("85.00")
    assert by_key[(Decimal(120), "forecasted")].utilisation_pct == Decimal("255.00")
    assert (st.utilisation_pct, st.forecast_pct) == (Decimal("85.00"), Decimal("255.00"))
    j = by_key[(Decimal(80), "actual")].to_json()
    assert j["actual"] == {"amount": "850", "currency": "USD"}
    assert j["dedupe_key"] == "data-monthly|month:2024-09-01T00:00:00Z|actual|80"


def test_explicit_forecast_is_used() -> None:
    st = evaluate(
        GRADED, Money.of("10"), period_start=SEPT[0], period_end=SEPT[1], now=DAY_11, forecast=Money.of("1250")
    )
    assert [(str(b.threshold_pct), b.basis) for b in st.breaches] == [("100", "forecasted"), ("120", "forecasted")]


def test_dedupe_key_stable_across_evaluations() -> None:
    first = evaluate(GRADED, Money.of("900"), period_start=SEPT[0], period_end=SEPT[1], now=DAY_11)
    later = evaluate(GRADED, Money.of("905.5"), period_start=SEPT[0], period_end=SEPT[1], now=_t(2024, 9, 29, 17, 3))
    keys_first = {b.dedupe_key for b in first.breaches}
    keys_later = {b.dedupe_key for b in later.breaches}
    assert {
        "data-monthly|month:2024-09-01T00:00:00Z|actual|50",
        "data-monthly|month:2024-09-01T00:00:00Z|actual|80",
    } <= keys_first & keys_later
    october = evaluate(
        GRADED, Money.of("900"), period_start=_t(2024, 10, 1), period_end=_t(2024, 11, 1), now=_t(2024, 10, 11)
    )
    assert not keys_first & {b.dedupe_key for b in october.breaches}


def test_run_budget_dedupes_per_run() -> None:
    b = BudgetConfig(name="per-run", scope={"dag": "etl"}, period="run", amount=Decimal("10"))
    st = evaluate(b, Money.of("11"), period_start=DAY_11, period_end=DAY_11, now=DAY_11, run_id="r-7")
    assert st.forecast == Money.of("11")
    assert {x.dedupe_key for x in st.breaches} == {
        "per-run|run:r-7|actual|50",
        "per-run|run:r-7|actual|80",
        "per-run|run:r-7|actual|100",
        "per-run|run:r-7|forecasted|100",
    }


def test_evaluate_refuses_another_currency() -> None:
    with pytest.raises(ValueError, match="budget data-monthly is in USD, spend is in EUR"):
        evaluate(GRADED, Money.of("1", "EUR"), period_start=SEPT[0], period_end=SEPT[1], now=DAY_11)


# ------------------------------------------------------------ engine on a ledger
BUDGETS = {
    "budgets": [
        {
            "name": "team-data",
            "scope": {"team": "data"},
            "amount": "200",
            "thresholds": [{"pct": 50}, {"pct": 80}, {"pct": 100, "actions": ["notify", "ticket"]}, {"pct": 120}],
        },
        {"name": "dag-etl", "scope": {"dag": "etl"}, "amount": "1000"},
        {"name": "platform-snowflake", "scope": {"platform": "snowflake"}, "amount": "1000"},
        {"name": "platform-aws", "scope": {"platform": "AWS"}, "amount": "1000"},
        {"name": "tag-prod", "scope": {"tag": {"env": "prod"}}, "amount": "100"},
        {"name": "team-data-eur", "scope": {"team": "data"}, "amount": "100", "currency": "EUR"},
        {"name": "data-weekly", "scope": {"team": "data"}, "period": "week", "amount": "100"},
        {"name": "etl-effective", "scope": {"dag": "etl"}, "amount": "1000", "cost_basis": "effective"},
        {"name": "etl-per-run", "scope": {"dag": "etl"}, "period": "run", "amount": "60"},
    ]
}
NOW = _t(2024, 9, 15, 12)  # a Sunday; ISO week 2024-09-09 .. 2024-09-16


@pytest.fixture
def loaded_ledger(ledger_url: str, make_record) -> Iterator[Ledger]:
    with Ledger(ledger_url) as led:
        led.ingest(
            [
                make_record(
                    "100.00",
                    day=1,
                    x_team="data",
                    x_dag_id="etl",
                    x_platform="snowflake",
                    x_run_id="r1",
                    effective_cost=Decimal("90"),
                ),
                make_record(
                    "50.25",
                    day=9,
                    x_team="data",
                    x_dag_id="etl",
                    x_platform="snowflake",
                    x_run_id="r2",
                    effective_cost=Decimal("45.125"),
                ),
                make_record("30", day=12, x_team="data", x_dag_id="ml", tags={"env": "prod"}),
                make_record("20", day=13, x_team="web", x_dag_id="site", tags={"env": "prod"}),
                make_record("5", day=13, x_team="web", tags={"env": "dev"}),
                make_record("40", day=3, x_team="data", billing_currency="EUR"),
                make_record("999", day=-1, x_team="data", x_dag_id="etl"),  # August
                make_record("777", day=30, x_team="data", x_dag_id="etl"),  # October
            ],
            source="test",
        )
        yield led


def test_engine_returns_exact_spend_per_scope(loaded_ledger: Ledger) -> None:
    engine = BudgetEngine(parse_config(BUDGETS), loaded_ledger)
    statuses = {s.budget.name: s for s in engine.evaluate_all(NOW)}
    assert "etl-per-run" not in statuses  # run budgets need a run id
    spend = {name: s.actual for name, s in statuses.items()}
    assert spend == {
        "team-data": Money.of("180.25"),
        "dag-etl": Money.of("150.25"),
        "platform-snowflake": Money.of("150.25"),
        "platform-aws": Money.of("55"),  # rows without x_platform fall back to ProviderName
        "tag-prod": Money.of("50"),
        "team-data-eur": Money.of("40", "EUR"),
        "data-weekly": Money.of("80.25"),  # 2024-09-10 and 2024-09-13
        "etl-effective": Money.of("135.125"),
    }
    others = {name: {c: Decimal(v) for c, v in s.other_currencies.items()} for name, s in statuses.items()}
    assert others["team-data"] == {"EUR": Decimal("40")}
    assert others["platform-aws"] == {"EUR": Decimal("40")}
    assert others["team-data-eur"] == {"USD": Decimal("180.25")}
    assert others["dag-etl"] == {}
    assert (statuses["team-data"].period_start, statuses["team-data"].period_end) == SEPT
    assert (statuses["data-weekly"].period_start, statuses["data-weekly"].period_end) == (
        _t(2024, 9, 9),
        _t(2024, 9, 16),
    )


def test_engine_breaches_and_forecast(loaded_ledger: Ledger) -> None:
    engine = BudgetEngine(parse_config(BUDGETS), loaded_ledger)
    (st,) = engine.evaluate_all(NOW, names=["team-data"])
    # 180.25 spent in 14.5 of 30 days
    assert abs(Fraction(st.forecast.amount) - Fraction("180.25") * 30 / Fraction("14.5")) < Fraction(1, 10**50)
    assert st.forecast.rounded() == Decimal("372.93")
    assert [(str(b.threshold_pct), b.basis) for b in st.breaches] == [("50", "actual"), ("80", "actual")]
    j = st.to_json(NOW)
    assert Money.from_json(j["actual"]) == Money.of("180.25")
    assert j["utilisation_pct"] == "90.12"  # 90.125 rounded half-even
    assert j["breach_eta"] == (_t(2024, 9, 1) + dt.timedelta(seconds=14.5 * 86400 * 200 / 180.25)).isoformat()


def test_run_budget_uses_the_runs_rows(loaded_ledger: Ledger) -> None:
    engine = BudgetEngine(parse_config(BUDGETS), loaded_ledger)
    (st,) = engine.evaluate_all(NOW, run_id="r1", names=["etl-per-run"])
    assert st.actual == Money.of("100.00")
    assert {b.dedupe_key for b in st.breaches} == {
        "etl-per-run|run:r1|actual|50",
        "etl-per-run|run:r1|actual|80",
        "etl-per-run|run:r1|actual|100",
        "etl-per-run|run:r1|forecasted|100",
    }
    assert engine.evaluate_all(NOW, run_id="r1", dag_id="other", names=["etl-per-run"]) == []


def test_new_breaches_are_returned_once(loaded_ledger: Ledger) -> None:
    engine = BudgetEngine(parse_config(BUDGETS), loaded_ledger)
    first = engine.new_breaches(engine.evaluate_all(NOW))
    assert sorted(b.dedupe_key for b in first) == [
        "data-weekly|week:2024-09-09T00:00:00Z|actual|50",
        "data-weekly|week:2024-09-09T00:00:00Z|actual|80",
        "tag-prod|month:2024-09-01T00:00:00Z|actual|50",
        "tag-prod|month:2024-09-01T00:00:00Z|forecasted|100",
        "team-data|month:2024-09-01T00:00:00Z|actual|50",
        "team-data|month:2024-09-01T00:00:00Z|actual|80",
    ]
    again = engine.evaluate_all(NOW + dt.timedelta(hours=1))
    assert sum(len(s.breaches) for s in again) == 6
    assert engine.new_breaches(again) == []
    assert len(loaded_ledger.breaches()) == 6
