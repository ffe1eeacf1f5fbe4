"""The pure streaming engine: the batch engine's breaches, exact totals, lateness, eviction, anomalies, state."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finops_provider.core.budgets import BudgetEngine, evaluate
from finops_provider.core.config import parse_config
from finops_provider.core.ledger import Ledger
from finops_provider.core.money import Money, exact_sum
from finops_provider.streaming.engine import StreamEngine, StreamSettings
from tests.unit.streaming.conftest import CONFIG, T0


def _engine(config: Any, **kw: Any) -> StreamEngine:
    return StreamEngine.from_config(config, **kw)


def test_one_budget_engine_two_feeds_identical_breaches(config, make_event, records, sqlite_url) -> None:
    """The stream's breaches are the very objects the batch engine produces over the same rows."""
    recs = records(*[make_event("37.5", minutes=60 * i) for i in range(16)])  # 600 USD over 15 hours
    eng = _engine(config)
    eng.apply(recs)
    stream_breaches, _ = eng.evaluate()
    with Ledger(sqlite_url) as led:
        led.ingest(recs, source="stream")
        statuses = BudgetEngine(config, led).evaluate_all(eng.clock)
    batch_breaches = [b for s in statuses for b in s.breaches]
    assert stream_breaches and sorted(stream_breaches, key=lambda b: b.dedupe_key) == sorted(
        batch_breaches, key=lambda b: b.dedupe_key
    )
    assert {b.dedupe_key for b in stream_breaches} == {
        "data-eng-month|month:2026-10-01T00:00:00Z|actual|50",
        "data-eng-month|month:2026-10-01T00:00:00Z|forecasted|100",
        "ingest-orders-day|day:2026-10-10T00:00:00Z|actual|80",
        "ingest-orders-day|day:2026-10-10T00:00:00Z|actual|100",
    }


def test_each_threshold_fires_once_at_the_event_that_crosses_it(config, make_event, records) -> None:
    eng = _engine(config)
    fired: dict[str, int] = {}
    for i in range(12):  # 12 x 10 USD on one day of ingest_orders: 80 at event 8, 100 at event 10
        eng.apply(records(make_event("10", minutes=i)))
        for b in eng.evaluate()[0]:
            if b.budget == "ingest-orders-day":
                assert b.dedupe_key not in fired
                fired[b.dedupe_key] = i + 1
    assert fired == {
        "ingest-orders-day|day:2026-10-10T00:00:00Z|actual|80": 8,
        "ingest-orders-day|day:2026-10-10T00:00:00Z|actual|100": 10,
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(
            st.decimals(min_value=-50, max_value=300, places=4, allow_nan=False, allow_infinity=False),
            st.integers(min_value=0, max_value=600),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_prefilter_never_misses_a_breach_evaluate_would_find(config, make_event, records, steps) -> None:
    """At every step the engine emits exactly evaluate()'s breaches not emitted before (actual and forecast)."""
    eng = _engine(config)
    budget = config.budgets[0]
    emitted: set[str] = set()
    minutes = 0
    total = Decimal(0)
    for amount, gap in steps:
        minutes += gap
        eng.apply(records(make_event(str(amount), minutes=minutes)))
        total += amount
        got = {b.dedupe_key for b in eng.evaluate()[0] if b.budget == budget.name}
        start = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
        want = evaluate(
            budget,
            Money(total, "USD"),
            period_start=start,
            period_end=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
            now=eng.clock,
        )
        assert got == {b.dedupe_key for b in want.breaches} - emitted
        emitted |= got


def test_totals_are_exact_credits_subtract_and_currencies_never_mix(config, make_event, records) -> None:
    amounts = ["0.1", "0.2", "-0.05", "123456789012345678.0000000000000001", "-7"]
    recs = records(*[make_event(a, minutes=i) for i, a in enumerate(amounts)], make_event("99", currency="EUR"))
    eng = _engine(config)
    eng.apply(recs)
    assert eng.total("data-eng-month", T0) == Money(exact_sum(Decimal(a) for a in amounts), "USD")
    (st_,) = [s for s in eng.budget_states() if s.b.cfg.name == "data-eng-month"]
    assert st_.others == {"EUR": Decimal("99")}


@pytest.mark.parametrize(
    ("late_minutes", "counted"),
    [
        pytest.param(-59, True, id="within-lateness-out-of-order"),
        pytest.param(-60, True, id="exactly-at-watermark"),
        pytest.param(-61, False, id="beyond-lateness"),
    ],
)
def test_late_events_beyond_allowed_lateness_are_not_counted(config, make_event, records, late_minutes, counted):
    eng = _engine(config, allowed_lateness=dt.timedelta(hours=1))
    eng.apply(records(make_event("1", minutes=600)))
    flags = eng.apply(records(make_event("5", minutes=600 + late_minutes)))
    assert flags == [not counted]
    assert eng.total("ingest-orders-day", T0).amount == (Decimal(6) if counted else Decimal(1))
    assert eng.stats.late == (0 if counted else 1)


def test_final_periods_are_evicted_so_state_stays_bounded(config, make_event, records) -> None:
    eng = _engine(config, allowed_lateness=dt.timedelta(minutes=10))
    for day in range(40):
        for h in range(3):
            eng.apply(records(make_event("1", minutes=day * 1440 + h * 60)))
        eng.evaluate()
        budgets, anomalies = eng.state_count()
        assert budgets <= 3  # today's day budget, this month's and (at a month boundary) last month's
        assert anomalies <= 3 * 2  # team/dag/platform scopes
    assert eng.stats.evicted >= 39


def test_run_budgets_are_kept_per_run(make_event, records) -> None:
    cfg = parse_config(
        {
            "budgets": [
                {
                    "name": "per-run",
                    "scope": {"dag": "ingest_orders"},
                    "period": "run",
                    "amount": "10",
                    "thresholds": [{"pct": 100}],
                }
            ]
        }
    )
    eng = StreamEngine.from_config(cfg)
    eng.apply(records(*[make_event("4", run_id="a", minutes=i) for i in range(3)]))
    eng.apply(records(make_event("4", run_id="b")))
    breaches, _ = eng.evaluate()
    assert [b.dedupe_key for b in breaches] == ["per-run|run:a|actual|100"]
    assert eng.total("per-run", run_id="b") == Money.of("4", "USD")


@pytest.mark.parametrize(
    ("scope", "event", "counted"),
    [
        pytest.param({"tag": {"env": "prod"}}, {"tags": {"env": "prod"}}, True, id="tag-match"),
        pytest.param({"tag": {"env": "prod"}}, {"tags": {"env": "dev"}}, False, id="tag-mismatch"),
        pytest.param({"dag": "ingest_orders", "platform": "databricks"}, {}, True, id="two-keys-match"),
        pytest.param({"dag": "ingest_orders", "platform": "snowflake"}, {}, False, id="two-keys-mismatch"),
        pytest.param({"cost_center": "CC-100"}, {}, True, id="mapped-cost-center"),
        pytest.param({"all": True}, {}, True, id="all"),
        pytest.param({"team": "ml"}, {}, False, id="other-team"),
    ],
)
def test_scope_matching_follows_the_budget_scope(make_event, records, scope, event, counted) -> None:
    cfg = parse_config({**CONFIG, "budgets": [{"name": "b", "scope": scope, "amount": "10"}]})
    eng = StreamEngine.from_config(cfg)
    eng.apply(records(make_event("2", **event)))
    assert eng.total("b", T0).amount == (Decimal(2) if counted else Decimal(0))


def _hourly(make_event, records, hour: int, amount: str, task: str = "load", n: int = 1) -> list[Any]:
    return records(*[make_event(amount, minutes=hour * 60 + k, task_id=task) for k in range(n)])


@pytest.mark.parametrize(
    ("cooldown", "hours"),
    [pytest.param(2, [8, 11], id="cooldown-2"), pytest.param(0, [8, 9, 10, 11], id="no-cooldown")],
)
def test_anomaly_fires_with_impact_and_root_cause_then_cools_down(config, make_event, records, cooldown, hours):
    eng = _engine(config, anomaly_dims=("dag",), anomaly_warmup=4, anomaly_cooldown=cooldown)
    for h in range(8):  # steady: 10 USD/hour from two tasks
        eng.apply(_hourly(make_event, records, h, "5", "load") + _hourly(make_event, records, h, "5", "transform"))
        assert eng.evaluate()[1] == []
    found = []
    for h, spike in zip(range(8, 12), ("40", "40", "40", "75"), strict=True):  # "transform" explodes
        eng.apply(_hourly(make_event, records, h, "5", "load") + _hourly(make_event, records, h, spike, "transform"))
        found += [(h, a) for a in eng.evaluate()[1]]
    assert [h for h, _ in found] == hours  # hours 9 and 10 pass both gates but are inside the cooldown
    a = found[0][1]
    assert a.scope == (("dag", "ingest_orders"),)
    assert a.actual == Money.of("45", "USD") and a.expected == Money.of("10", "USD")
    assert a.impact == Money.of("35", "USD") and a.score == Decimal("450.0")
    assert a.root_cause == ("task", "transform", Money.of("35", "USD"))
    assert a.window_start == T0 + dt.timedelta(hours=8)


@pytest.mark.parametrize(
    ("spike", "min_impact", "warmup", "fires"),
    [
        pytest.param("14", "1", 4, False, id="below-pct-gate"),
        pytest.param("16", "10", 4, False, id="pct-ok-below-absolute-gate"),
        pytest.param("21", "10", 4, True, id="both-gates"),
        pytest.param("21", "10", 20, False, id="still-warming-up"),
    ],
)
def test_anomaly_needs_both_gates_and_warmup(config, make_event, records, spike, min_impact, warmup, fires) -> None:
    eng = _engine(config, anomaly_dims=("dag",), anomaly_warmup=warmup, anomaly_min_impact=Decimal(min_impact))
    for h in range(8):
        eng.apply(_hourly(make_event, records, h, "10"))
        eng.evaluate()
    eng.apply(_hourly(make_event, records, 8, spike))
    assert bool(eng.evaluate()[1]) is fires


def test_state_round_trips_and_restored_breaches_are_produced_again(config, make_event, records) -> None:
    eng = _engine(config, anomaly_dims=("dag",), anomaly_warmup=2)
    for h in range(4):
        eng.apply(_hourly(make_event, records, h, "5"))
    eng.apply(_hourly(make_event, records, 4, "60"))
    breaches, anomalies = eng.evaluate()
    assert breaches and anomalies
    saved = [(kind, payload) for _key, kind, _end, payload in eng.dirty_state()]
    again = _engine(config, anomaly_dims=("dag",), anomaly_warmup=2)
    again.load(saved)
    assert again.clock == eng.clock
    assert again.total("data-eng-month", T0) == eng.total("data-eng-month", T0) == Money.of("80", "USD")
    b2, a2 = again.evaluate()
    # breaches come back (the ledger's claim keeps their actions to one); the anomaly does not (its cooldown is state)
    assert {b.dedupe_key for b in b2} == {b.dedupe_key for b in breaches}
    assert a2 == []
    assert [k for k, *_ in eng.dirty_state()] == ["clock"]  # nothing changed since the last snapshot
    assert again.watermark == eng.watermark


def test_settings_default_anomaly_gates_come_from_config(config) -> None:
    s = StreamSettings.from_config(config)
    assert (s.anomaly_threshold_pct, s.anomaly_min_impact) == (Decimal(150), Decimal(10))
