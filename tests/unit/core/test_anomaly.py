"""Anomalies: the seed's threshold_pct rule over a median baseline, impact gate, warm-up, root cause."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal

import pytest

from finops_provider.core.anomaly import BaselineDetector, robust_baseline, threshold_rule
from finops_provider.core.ledger import Ledger
from finops_provider.core.money import Money

D = Decimal


def _hist(*values: str) -> list[Decimal]:
    return [D(v) for v in values]


@pytest.mark.parametrize(
    ("history", "current", "threshold", "min_impact", "expected"),
    [
        pytest.param(
            _hist("10", "10", "10"), "15", "150", "1", (False, D(10), D("150.0")), id="exactly-150-is-not-above"
        ),
        pytest.param(_hist("10", "10", "10"), "15.01", "150", "1", (True, D(10), D("150.1")), id="just-above-150"),
        pytest.param(_hist("10", "10", "10"), "20", "200", "1", (False, D(10), D("200.0")), id="exactly-200"),
        pytest.param(_hist("10", "10", "10"), "20.01", "200", "1", (True, D(10), D("200.1")), id="above-200"),
        pytest.param(_hist("10", "10", "10"), "5", "150", "1", (False, D(10), D("50.0")), id="drop-is-not-a-spike"),
        pytest.param(_hist("1", "1", "1"), "2", "150", "1", (True, D(1), D("200.0")), id="impact-equal-to-min"),
        pytest.param(_hist("1", "1", "1"), "2", "150", "1.01", (False, D(1), D("200.0")), id="impact-below-min"),
        pytest.param(_hist("10", "10"), "100", "150", "1", (False, D(10), D(0)), id="warm-up"),
        pytest.param(
            _hist("10", "10", "1000", "10", "10"),
            "16",
            "150",
            "1",
            (True, D(10), D("160.0")),
            id="median-ignores-an-old-spike",
        ),
        pytest.param(_hist("0", "0", "0"), "5", "150", "1", (True, D(0), D(999999)), id="from-zero"),
        pytest.param(_hist("0", "0", "0"), "0.5", "150", "1", (False, D(0), D(999999)), id="from-zero-tiny"),
    ],
)
def test_threshold_rule(history, current, threshold, min_impact, expected) -> None:
    assert threshold_rule(history, D(current), threshold_pct=D(threshold), min_impact=D(min_impact)) == expected


def test_threshold_rule_custom_warmup() -> None:
    assert threshold_rule(_hist("10"), D(100), threshold_pct=D(150), min_impact=D(1), warmup=1)[0] is True
    assert threshold_rule(_hist("10"), D(100), threshold_pct=D(150), min_impact=D(1), warmup=2)[0] is False


@pytest.mark.parametrize(
    ("values", "median"),
    [
        pytest.param(["1", "2", "3"], "2", id="odd"),
        pytest.param(["1", "2", "3", "40"], "2.5", id="even"),
        pytest.param(["0.1", "0.2"], "0.15", id="exact-decimal"),
        pytest.param([], "0", id="empty"),
    ],
)
def test_robust_baseline_is_an_exact_median(values: list[str], median: str) -> None:
    got = robust_baseline([D(v) for v in values])
    assert isinstance(got, Decimal)
    assert got == D(median)


# ------------------------------------------------------------------- scan
DAY = dt.date(2024, 9, 15)
START = dt.datetime(2024, 9, 1, tzinfo=dt.UTC)


@pytest.fixture
def series_ledger(ledger_url: str, make_record) -> Callable[..., Ledger]:
    """A ledger with 14 baseline days (Sept 1-14) and ``DAY``; the last day's etl_spike cost is given."""
    opened: list[Ledger] = []

    def build(spike: str = "5", *, newcomer: str | None = None) -> Ledger:
        led = Ledger(ledger_url)
        opened.append(led)
        rows = []
        for day in range(15):
            last = day == 14
            rows += [
                make_record(
                    spike if last else "5",
                    day=day,
                    x_team="data",
                    x_dag_id="etl_spike",
                    x_task_id="load",
                    x_platform="snowflake",
                    service_name="Snowflake Warehouse",
                ),
                make_record(
                    "5",
                    day=day,
                    hour=1,
                    x_team="data",
                    x_dag_id="etl_flat",
                    x_task_id="load",
                    x_platform="snowflake",
                    service_name="Snowflake Warehouse",
                ),
                make_record(
                    "8",
                    day=day,
                    hour=2,
                    x_team="web",
                    x_dag_id="site",
                    x_task_id="render",
                    x_platform="bigquery",
                    service_name="BigQuery",
                ),
            ]
        if newcomer is not None:  # a team seen for the first time on the last day
            rows.append(
                make_record(
                    newcomer,
                    day=14,
                    hour=3,
                    x_team="new",
                    x_dag_id="fresh",
                    x_platform="bigquery",
                    service_name="BigQuery",
                )
            )
        led.ingest(rows, source="series")
        return led

    yield build
    for led in opened:
        led.close()


def test_spike_on_the_last_day_is_found_with_its_root_cause(series_ledger) -> None:
    (a,) = BaselineDetector().scan(series_ledger("45"), DAY, dims=("team",))
    assert a.scope == (("team", "data"),)
    assert (a.expected, a.actual, a.impact) == (Money.of("10"), Money.of("50"), Money.of("40"))
    assert a.score == D("500.0")
    assert a.severity == "high"
    assert a.root_cause == ("dag", "etl_spike", Money.of("40"))
    assert (a.window_start, a.window_end) == (
        dt.datetime(2024, 9, 15, tzinfo=dt.UTC),
        dt.datetime(2024, 9, 16, tzinfo=dt.UTC),
    )
    assert a.dedupe_key == "anomaly|team=data|2024-09-15T00"
    j = a.to_json()
    assert (j["root_cause"]["dimension"], j["root_cause"]["value"]) == ("dag", "etl_spike")
    assert Money.from_json(j["root_cause"]["impact"]) == Money.of("40")
    assert Money.from_json(j["impact"]) == Money.of("40")


def test_every_dimension_names_its_own_child(series_ledger) -> None:
    found = BaselineDetector().scan(series_ledger("45"), DAY)
    assert [(a.scope, a.root_cause) for a in found] == [
        ((("team", "data"),), ("dag", "etl_spike", Money.of("40"))),
        ((("dag", "etl_spike"),), ("task", "etl_spike.load", Money.of("40"))),
        ((("platform", "snowflake"),), ("service", "Snowflake Warehouse", Money.of("40"))),
    ]
    assert [a.score for a in found] == [D("500.0"), D("900.0"), D("500.0")]


def test_flat_series_has_no_anomaly(series_ledger) -> None:
    assert BaselineDetector().scan(series_ledger("5"), DAY) == []


def test_spike_below_the_threshold_is_ignored(series_ledger) -> None:
    # data: 5 + 9.9 = 14.9 <= 150 % of 10 -> not anomalous; dag etl_spike 9.9 > 150 % of 5 -> anomalous
    found = BaselineDetector().scan(series_ledger("9.9"), DAY)
    assert [a.scope for a in found] == [(("dag", "etl_spike"),)]


def test_min_impact_gate(series_ledger) -> None:
    led = series_ledger("45")
    assert BaselineDetector(min_impact=D("40")).scan(led, DAY, dims=("team",))[0].impact == Money.of("40")
    assert BaselineDetector(min_impact=D("40.01")).scan(led, DAY, dims=("team",)) == []


def test_higher_threshold_pct(series_ledger) -> None:
    led = series_ledger("45")  # data: 500 % of baseline
    assert len(BaselineDetector(threshold_pct=D(499)).scan(led, DAY, dims=("team",))) == 1
    assert BaselineDetector(threshold_pct=D(500)).scan(led, DAY, dims=("team",)) == []


def test_new_scope_is_in_warm_up(series_ledger) -> None:
    assert BaselineDetector().scan(series_ledger("5", newcomer="100"), DAY, dims=("team",)) == []


def test_severity_bands() -> None:
    from finops_provider.core.anomaly import Anomaly

    def anomaly(score: str) -> Anomaly:
        t = dt.datetime(2024, 9, 15, tzinfo=dt.UTC)
        return Anomaly((("team", "x"),), t, t, Money.of(1), Money.of(3), D(score), "test")

    assert [anomaly(s).severity for s in ("150.1", "199.9", "200", "299.9", "300")] == [
        "low",
        "low",
        "medium",
        "medium",
        "high",
    ]
