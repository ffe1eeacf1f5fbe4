"""The robust detector (series API and ledger scan), its gates, incidents, feedback labels, and the EWMA variant."""

from __future__ import annotations

import datetime as dt
import random
import tracemalloc
from decimal import Decimal

import pytest

from finops_provider.core.anomaly import (
    BaselineDetector,
    EwmaDetector,
    RobustDetector,
    anomaly_labels,
    detect_series,
    detector_from_config,
    label_anomaly,
    parse_dedupe_key,
    planned_windows,
)
from finops_provider.core.config import parse_config
from finops_provider.core.ledger import Ledger
from finops_provider.core.money import Money

D = Decimal
T0 = dt.datetime(2024, 7, 15, tzinfo=dt.UTC)  # a Monday, mid-month


def _series(n: int = 70, *, seed: int = 1, base: float = 100.0, noise: float = 0.05, weekend: float = 0.5):
    rng = random.Random(seed)
    out = {}
    for i in range(n):
        d = T0 + dt.timedelta(days=i)
        season = weekend if d.weekday() >= 5 else 1.0
        out[d] = D(repr(round(base * season * rng.lognormvariate(0, noise), 2)))
    return out


def _day(i: int) -> dt.datetime:
    return T0 + dt.timedelta(days=i)


def test_a_quiet_seasonal_series_has_no_anomaly() -> None:
    assert detect_series(_series()) == []


def test_spike_is_found_on_its_day_with_money_and_score() -> None:
    s = _series()
    s[_day(50)] = D("400.05")  # a Tuesday at 4x
    (a,) = detect_series(s, scope=(("dag", "etl"),), currency="EUR")
    assert (a.window_start, a.window_end) == (_day(50), _day(51))
    assert a.actual == Money.of("400.05", "EUR")
    assert a.kind == "spike" and a.direction == "up" and a.detector == "robust"
    assert D(90) < a.expected.amount < D(110)
    assert a.impact == a.actual - a.expected and a.impact.currency == "EUR"
    assert a.zscore is not None and a.zscore >= 4
    assert a.severity == "high"  # about 400 % of expected
    assert a.dedupe_key == "anomaly|dag=etl|2024-09-03T00"
    j = a.to_json()
    assert j["kind"] == "spike" and j["granularity"] == "day" and Money.from_json(j["actual"]) == a.actual


@pytest.mark.parametrize(
    ("day", "value", "found"),
    [
        pytest.param(54, "50", False, id="weekend-dip-is-normal"),
        pytest.param(54, "100", True, id="weekday-level-on-a-saturday"),
        pytest.param(52, "100", False, id="weekday-level-on-a-thursday"),
    ],
)
def test_weekday_seasonality(day: int, value: str, found: bool) -> None:
    s = _series(noise=0.02)
    s[_day(day)] = D(value)
    got = detect_series(s)
    assert bool(got) is found
    if found:
        assert got[0].window_start == _day(day)


@pytest.mark.parametrize(
    ("settings", "found"),
    [
        pytest.param({}, True, id="all-gates-pass"),
        pytest.param({"min_impact": D(200)}, False, id="impact-gate"),
        pytest.param({"min_change_pct": D(300)}, False, id="relative-gate"),
        pytest.param({"z_threshold": 100.0}, False, id="statistical-gate"),
        pytest.param({"warmup": 60}, False, id="warm-up"),
    ],
)
def test_every_gate_must_pass(settings: dict, found: bool) -> None:
    s = _series()
    s[_day(50)] = D(250)
    assert bool(detect_series(s, **settings)) is found


def test_a_level_shift_is_one_anomaly_then_the_new_normal() -> None:
    s = _series(90)
    for i in range(50, 90):
        s[_day(i)] *= 2
    got = detect_series(s)
    assert [a.window_start for a in got] == [_day(50)]


def test_drop_to_zero_is_one_drop_and_can_be_disabled() -> None:
    s = _series()
    for i in range(50, 53):
        s[_day(i)] = D(0)
    (a,) = detect_series(s)
    assert (a.window_start, a.kind, a.direction, a.actual) == (_day(50), "drop", "down", Money.of(0))
    assert a.severity == "medium"
    assert detect_series(s, drops=False) == []


def test_a_slow_ramp_is_caught_by_the_drift_check() -> None:
    s = _series(90, noise=0.03)
    for i in range(50, 90):
        s[_day(i)] = (s[_day(i)] * D(1 + min((i - 49) / 15, 1.0) * 1.5)).quantize(D("0.01"))
    got = detect_series(s)
    assert len(got) == 1 and 50 <= (got[0].window_start - T0).days <= 66
    assert detect_series(s, drift=False, z_threshold=50.0) == []


def test_month_start_batch_jobs_are_learnt() -> None:
    s = _series(140, noise=0.03)
    for d in s:
        if d.day == 1:
            s[d] += D(300)
    got = detect_series(s, warmup=14)
    # the first month start after the warm-up is news; later ones are the usual batch job
    assert [a.window_start.date() for a in got] == [dt.date(2024, 8, 1)]


def test_planned_window_suppresses() -> None:
    s = _series()
    s[_day(50)] = D(400)
    assert detect_series(s, planned=[(_day(49), _day(52))]) == []
    assert len(detect_series(s, planned=[(_day(51), _day(52))])) == 1


def test_root_cause_names_the_exploding_child() -> None:
    rng = random.Random(4)
    kids = {t: {_day(i): D(repr(round(20 * rng.lognormvariate(0, 0.03), 2))) for i in range(60)} for t in "abcde"}
    kids["c"][_day(50)] = D(200)
    total = {_day(i): sum((kids[t][_day(i)] for t in kids), D(0)) for i in range(60)}
    (a,) = detect_series(total, children=kids, child_dim="task")
    assert a.root_cause is not None
    dim, value, impact = a.root_cause
    assert (dim, value) == ("task", "c") and D(170) < impact.amount < D(185)


def test_hour_and_run_granularities() -> None:
    rng = random.Random(2)
    hours = {
        T0 + dt.timedelta(hours=h): D(repr(round((10 if 8 <= h % 24 < 20 else 2) * rng.lognormvariate(0, 0.05), 3)))
        for h in range(24 * 21)
    }
    assert detect_series(hours, granularity="hour") == []
    spike_at = T0 + dt.timedelta(days=18, hours=3)  # a night hour at day-time cost x 3
    hours[spike_at] = D(30)
    (a,) = detect_series(hours, granularity="hour")
    assert (a.window_start, a.window_end, a.granularity) == (spike_at, spike_at + dt.timedelta(hours=1), "hour")
    runs = [(T0 + dt.timedelta(minutes=37 * i), D("5") + D(i % 3) / 10) for i in range(20)]
    runs[15] = (runs[15][0], D(40))
    (r,) = detect_series(runs, granularity="run")
    assert (r.window_start, r.window_end) == (runs[15][0], runs[16][0])
    with pytest.raises(ValueError, match="granularity 'week'"):
        RobustDetector(granularity="week")


def test_detector_from_config() -> None:
    assert isinstance(detector_from_config(parse_config({}).anomaly), RobustDetector)
    cfg = parse_config({"anomaly": {"detector": "threshold_pct", "threshold_pct": 200, "min_impact": "5"}}).anomaly
    det = detector_from_config(cfg)
    assert isinstance(det, BaselineDetector) and det.threshold_pct == 200 and det.min_impact == 5
    tuned = detector_from_config(parse_config({"anomaly": {"z_threshold": 6, "min_change_pct": 50}}).anomaly)
    assert isinstance(tuned, RobustDetector) and (tuned.z_threshold, tuned.min_change_pct) == (6.0, D(50))


# ------------------------------------------------------------------ ledger scan + feedback
DAY = dt.date(2024, 9, 29)


@pytest.fixture
def spike_ledger(ledger_url: str, make_record):
    """29 days (Sept 1-29) of two DAGs of team data; task load of etl explodes on the last day."""
    rng = random.Random(7)
    rows = []
    for day in range(29):
        for task in ("extract", "load", "publish"):
            cost = D(repr(round(10 * rng.lognormvariate(0, 0.03), 2)))
            if day == 28 and task == "load":
                cost = D(80)
            rows.append(
                make_record(cost, day=day, x_team="data", x_dag_id="etl", x_task_id=task, x_platform="snowflake")
            )
        rows.append(make_record("7", day=day, hour=1, x_team="data", x_dag_id="flat", x_task_id="x"))
    with Ledger(ledger_url) as led:
        led.ingest(rows, source="series")
        yield led


def test_scan_finds_the_day_with_its_root_cause(spike_ledger: Ledger) -> None:
    found = RobustDetector().scan(spike_ledger, DAY)
    got = {a.scope: a.root_cause[:2] if a.root_cause else None for a in found}
    assert got == {
        (("team", "data"),): ("dag", "etl"),
        (("dag", "etl"),): ("task", "etl.load"),
        (("platform", "snowflake"),): ("service", "Amazon S3"),
    }
    assert all(a.window_start.date() == DAY and a.actual.currency == "USD" for a in found)
    assert RobustDetector().scan(spike_ledger, DAY - dt.timedelta(days=1)) == []
    assert len(RobustDetector().scan(spike_ledger, DAY, ("dag",), lookback=7)) == 1


def test_planned_label_suppresses_the_scope(spike_ledger: Ledger) -> None:
    (a,) = RobustDetector().scan(spike_ledger, DAY, ("dag",))
    row = label_anomaly(spike_ledger, a.dedupe_key, "planned", note="backfill", who="ana")
    assert row["until"] == (a.window_start + dt.timedelta(days=7)).isoformat()
    assert planned_windows(spike_ledger) == {"dag=etl": [(a.window_start, a.window_start + dt.timedelta(days=7))]}
    assert RobustDetector().scan(spike_ledger, DAY, ("dag",)) == []
    assert len(RobustDetector().scan(spike_ledger, DAY, ("team",))) == 1  # other scopes still alert
    label_anomaly(spike_ledger, a.dedupe_key, "true")  # the latest label wins
    assert [r["label"] for r in anomaly_labels(spike_ledger, dedupe_key=a.dedupe_key)] == ["planned", "true"]
    assert len(RobustDetector().scan(spike_ledger, DAY, ("dag",))) == 1


@pytest.mark.parametrize(
    ("key", "label", "message"),
    [
        pytest.param("anomaly|dag=etl|2024-09-29T00", "maybe", "label 'maybe'", id="bad-label"),
        pytest.param("budget|x|y", "true", "not an anomaly key", id="bad-key"),
        pytest.param("anomaly|dag=etl|yesterday", "true", "is not YYYY-MM-DDTHH", id="bad-time"),
    ],
)
def test_label_errors(spike_ledger: Ledger, key: str, label: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        label_anomaly(spike_ledger, key, label)
    assert anomaly_labels(spike_ledger) == []


def test_parse_dedupe_key() -> None:
    assert parse_dedupe_key("anomaly|team=data,dag=etl|2024-09-29T13") == (
        "team=data,dag=etl",
        dt.datetime(2024, 9, 29, 13, tzinfo=dt.UTC),
    )


# ------------------------------------------------------------------ streaming EWMA
H = dt.timedelta(hours=1)
SCOPE = (("dag", "etl"),)


def _feed(det: EwmaDetector, values: list[str], start: dt.datetime = T0) -> list:
    return [det.update(SCOPE, start + i * H, D(v)) for i, v in enumerate(values)]


def test_ewma_warm_up_then_one_alert_per_period() -> None:
    det = EwmaDetector(warmup=24)
    rng = random.Random(3)
    quiet = [repr(round(10 * rng.lognormvariate(0, 0.05), 2)) for _ in range(30)]
    assert all(a is None for a in _feed(det, quiet))
    t = T0 + 30 * H
    assert det.update(SCOPE, t, D(5)) is None  # still filling
    a = det.update(SCOPE, t, D(40))
    assert a is not None and a.window_start == t and a.window_end == t + H and a.granularity == "hour"
    assert a.actual == Money.of(40) and D(9) < a.expected.amount < D(11) and a.detector == "ewma"
    assert det.update(SCOPE, t, D(60)) is None  # same period: already reported
    assert det.update(SCOPE, t + H, D(60)) is None  # cooldown
    early = EwmaDetector(warmup=24)
    _feed(early, quiet[:10])
    assert early.update(SCOPE, T0 + 10 * H, D(400)) is None  # warm-up


def test_ewma_gates_and_planned_suppression() -> None:
    quiet = ["10"] * 30
    det = EwmaDetector(min_impact=D(50))
    _feed(det, quiet)
    assert det.update(SCOPE, T0 + 30 * H, D(40)) is None  # +30 < 50
    det2 = EwmaDetector()
    _feed(det2, quiet)
    det2.suppress(SCOPE, T0 + 32 * H)
    assert det2.update(SCOPE, T0 + 30 * H, D(40)) is None
    assert det2.update(SCOPE, T0 + 32 * H, D(40)) is not None


def test_ewma_gap_decays_and_late_periods_are_ignored() -> None:
    det = EwmaDetector(warmup=5)
    _feed(det, ["10"] * 10)
    assert det.update(SCOPE, T0 + 3 * H, D(999)) is None  # an earlier, closed period
    st = det.states[(SCOPE, "USD")]
    before = st.mean
    det.update(SCOPE, T0 + 15 * H, D(0))  # 4 empty hours folded as zeros
    assert st.mean is not None and before is not None and st.mean < before
    assert det.evict(T0 + 100 * H) == 1 and det.states == {}


def test_ewma_state_is_small_and_constant() -> None:
    det = EwmaDetector(warmup=2)
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    for k in range(500):
        scope = (("dag", f"d{k}"),)
        for i in range(40):  # history length does not grow the state
            det.update(scope, T0 + i * H, D(k + i % 3))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(base, "filename"))
    per_scope = grown / 500
    assert per_scope <= EwmaDetector.STATE_BYTES + 200, per_scope  # + the scope key tuples built here
