"""Cost anomaly detection: the seed's threshold rule, a robust seasonal detector and a streaming EWMA.

Three detectors return the same :class:`Anomaly` (scope, window, expected vs actual, impact in money with its
currency, score, severity band, root cause):

* :class:`BaselineDetector` — the seed's ``anomaly_threshold_pct`` rule: a period above ``threshold_pct`` % of
  the baseline (median of the previous periods) *and* at least ``min_impact`` above it.
* :class:`RobustDetector` — the default (``anomaly.detector: robust``). Per scope and granularity (run, hour,
  day) the expected value is a seasonal, trend-aware robust baseline: the median of the last season of
  de-seasonalised values (weekday / hour-of-week factors from medians), a damped long-window trend, and a
  month-boundary factor learnt from previous months (month-start batch jobs are not incidents). The score is
  a robust z-score of the relative residual (median / MAD of past one-step residuals). An alert needs every
  gate: ``|z| >= z_threshold``, relative change ``>= min_change_pct`` and absolute impact ``>= min_impact``;
  none fire during ``warmup`` observations. One incident is one anomaly: while a scope is in an incident no
  new alert fires (hysteresis: it ends when ``|z| < z_exit``), the incident's values are replaced by their
  expectation in the history for up to ``accept_after`` periods (then a persistent change is accepted as the
  new normal), and ``cooldown`` periods follow it. A slow-drift check compares the recent median with the
  level two weeks back so ramps that a one-step detector keeps adapting to are still caught. Drops (for
  example to zero) are detected too. Planned activity (feedback label ``planned``) suppresses alerts of its
  scope while active.
* :class:`EwmaDetector` — the streaming variant: ``update(scope, period_start, amount)`` with O(1) state per
  scope (EWMA level and EWMA absolute relative deviation, same gates, cooldown).

The series API :func:`detect_series` runs the robust detector on plain values (no ledger): the evaluation
harness ``bench/anomaly_eval.py`` measures precision, recall, false alerts and delay with it. Money stays
``Decimal``; floats are used only inside the statistical score and the estimate of the expected value.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from finops_provider.core.aggregation import aggregate_ledger
from finops_provider.core.money import MONEY_CONTEXT, Money

log = logging.getLogger(__name__)

#: the child dimension used for root cause, per scope dimension
ROOT_CAUSE_CHILD = {
    "team": "dag",
    "cost_center": "team",
    "dag": "task",
    "platform": "service",
    "job": "service",
    "service": "resource",
}


@dataclass(frozen=True)
class Anomaly:
    """An unexpected cost: scope, window, expected vs actual, impact, score, severity and root cause."""

    scope: tuple[tuple[str, str], ...]
    window_start: dt.datetime
    window_end: dt.datetime
    expected: Money
    actual: Money
    score: Decimal  # actual as % of expected
    detector: str
    root_cause: tuple[str, str, Money] | None = None  # (dimension, value, its share of the excess)
    zscore: Decimal | None = None  # robust z-score of the relative residual (robust / ewma detectors)
    kind: str | None = None  # spike | drop | drift (robust / ewma detectors)
    granularity: str = "day"  # run | hour | day

    @property
    def impact(self) -> Money:
        return self.actual - self.expected

    @property
    def direction(self) -> str:
        return "down" if self.actual < self.expected else "up"

    @property
    def severity(self) -> str:
        """Band from the size of the change: up ``>= 300 %`` of expected high, ``>= 200 %`` medium; down to
        ``<= 10 %`` of expected (a pipeline that stopped) medium; anything else low."""
        if self.direction == "down":
            return "medium" if self.score <= 10 else "low"
        if self.score >= 300:
            return "high"
        if self.score >= 200:
            return "medium"
        return "low"

    @property
    def dedupe_key(self) -> str:
        s = ",".join(f"{k}={v}" for k, v in self.scope)
        return f"anomaly|{s}|{self.window_start:%Y-%m-%dT%H}"

    def to_json(self) -> dict[str, Any]:
        return {
            "dedupe_key": self.dedupe_key,
            "scope": dict(self.scope),
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "expected": self.expected.to_json(),
            "actual": self.actual.to_json(),
            "impact": self.impact.to_json(),
            "score_pct": str(self.score),
            "severity": self.severity,
            "detector": self.detector,
            "zscore": str(self.zscore) if self.zscore is not None else None,
            "kind": self.kind,
            "direction": self.direction,
            "granularity": self.granularity,
            "root_cause": (
                {"dimension": self.root_cause[0], "value": self.root_cause[1], "impact": self.root_cause[2].to_json()}
                if self.root_cause
                else None
            ),
        }


def robust_baseline(history: Sequence[Decimal]) -> Decimal:
    """Median of the history (exact Decimal)."""
    return Decimal(statistics.median(history)) if history else Decimal(0)


def threshold_rule(
    history: Sequence[Decimal], current: Decimal, *, threshold_pct: Decimal, min_impact: Decimal, warmup: int = 3
) -> tuple[bool, Decimal, Decimal]:
    """The seed's rule: is ``current`` above ``threshold_pct`` % of the baseline?

    :return: (is_anomaly, expected, score as % of expected).
    """
    expected = robust_baseline(history)
    with localcontext(MONEY_CONTEXT):
        if len(history) < warmup:
            return False, expected, Decimal(0)
        if expected <= 0:
            score = Decimal(0) if current <= 0 else Decimal("Infinity")
        else:
            score = (current * 100 / expected).quantize(Decimal("0.1"), rounding=ROUND_HALF_EVEN)
        is_anom = current * 100 > expected * threshold_pct and (current - expected) >= min_impact
    return is_anom, expected, score if score.is_finite() else Decimal("999999")


def _history(by_day: dict[str, Decimal], days: list[str]) -> list[Decimal]:
    """Daily values from the scope's first day with cost on (days before it are not "zero cost", they are
    "not yet running"); later days without rows count as zero."""
    first = next((i for i, d in enumerate(days) if d in by_day), len(days))
    return [by_day.get(d, Decimal(0)) for d in days[first:]]


class BaselineDetector:
    """Daily scan of the ledger per scope dimension using :func:`threshold_rule`."""

    name = "threshold_pct"

    def __init__(
        self, threshold_pct: Decimal = Decimal(150), min_impact: Decimal = Decimal(1), baseline_days: int = 14
    ) -> None:
        self.threshold_pct = Decimal(threshold_pct)
        self.min_impact = Decimal(min_impact)
        self.baseline_days = baseline_days

    def scan(
        self, ledger: Any, day: dt.date, dims: Sequence[str] = ("team", "dag", "platform"), **filters: Any
    ) -> list[Anomaly]:
        """Anomalies on ``day`` (UTC) for each value of each dimension."""
        start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) - dt.timedelta(days=self.baseline_days)
        end = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) + dt.timedelta(days=1)
        days = [(start + dt.timedelta(days=i)).strftime("%Y-%m-%d") for i in range(self.baseline_days)]
        today = day.strftime("%Y-%m-%d")
        out: list[Anomaly] = []
        for dim in dims:
            agg = aggregate_ledger(ledger, [dim, "day"], start=start, end=end, **filters)
            series: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(dict)
            for g in agg.groups:
                series[(g.keys[0], g.currency)][g.keys[1]] = g.amount
            for (value, cur), by_day in series.items():
                current = by_day.get(today, Decimal(0))
                hist = _history(by_day, days)
                hit, expected, score = threshold_rule(
                    hist, current, threshold_pct=self.threshold_pct, min_impact=self.min_impact
                )
                if not hit:
                    continue
                rc = self._root_cause(ledger, dim, value, cur, start, end, days, today, filters)
                out.append(
                    Anomaly(
                        scope=((dim, value),),
                        window_start=end - dt.timedelta(days=1),
                        window_end=end,
                        expected=Money(expected, cur),
                        actual=Money(current, cur),
                        score=score,
                        detector=self.name,
                        root_cause=rc,
                    )
                )
        out.sort(key=lambda a: -a.impact.amount)
        return out

    def _root_cause(
        self,
        ledger: Any,
        dim: str,
        value: str,
        cur: str,
        start: dt.datetime,
        end: dt.datetime,
        days: list[str],
        today: str,
        filters: dict[str, Any],
    ) -> tuple[str, str, Money] | None:
        child = ROOT_CAUSE_CHILD.get(dim, "service")
        agg = aggregate_ledger(ledger, [dim, child, "day"], start=start, end=end, **filters)
        per: dict[str, dict[str, Decimal]] = defaultdict(dict)
        for g in agg.groups:
            if g.keys[0] == value and g.currency == cur:
                per[g.keys[1]][g.keys[2]] = g.amount
        best: tuple[Decimal, str] | None = None
        for c, by_day in per.items():
            delta = by_day.get(today, Decimal(0)) - robust_baseline(_history(by_day, days))
            if best is None or delta > best[0]:
                best = (delta, c)
        if best is None or best[0] <= 0:
            return None
        return child, best[1], Money(best[0], cur)


# ====================================================================== robust detector
#: per granularity: (season length, level window, history window), in periods
_SHAPE = {"day": (7, 7, 56), "hour": (168, 24, 672), "run": (1, 7, 28)}
_STEP = {"day": dt.timedelta(days=1), "hour": dt.timedelta(hours=1)}
DEFAULT_PLANNED = dt.timedelta(days=7)  # how long a ``planned`` label suppresses its scope without ``until``


def _mad(xs: Sequence[float]) -> tuple[float, float]:
    """(median, 1.4826 × median absolute deviation): a robust centre and standard deviation."""
    m = statistics.median(xs)
    return m, 1.4826 * statistics.median(abs(x - m) for x in xs)


def _month_edge(day: dt.date) -> int | None:
    """1, 2, 3 for the first days of a month, -1, -2 for the last two; else None (batch-job calendar days)."""
    if day.day <= 3:
        return day.day
    nxt = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    back = (day - nxt).days  # -1 on the last day
    return back if back >= -2 else None


@dataclass
class _Hit:
    t: int
    expected: float
    z: float
    kind: str


class _SeriesModel:
    """The robust detector's state over one series (values in order, one per period)."""

    def __init__(self, det: RobustDetector) -> None:
        self.d = det
        self.season, self.level_w, self.hist_w = _SHAPE[det.granularity]
        self.values: list[float] = []
        self.clean: list[float] = []  # values, with incident periods replaced by their expectation
        self.rel: list[float | None] = []  # one-step relative residuals used for the scale
        #: month-edge tag -> [(excess / level, excess)] with excess = actual - expected without the edge; a batch
        #: job scales with its DAG, so the usual excess is applied relative to the current level
        self.edge_excess: dict[int, list[tuple[float, float]]] = defaultdict(list)
        self.incident: tuple[int, int] | None = None  # (first period, direction)
        self.cooldown_until = -1
        self.last_alert = -(10**9)
        self.last_change = -(10**9)  # last period an incident started or ended (alerted or not)
        self._factors: list[float] = [1.0] * self.season
        self._factors_at = -(10**9)

    # ------------------------------------------------------------ the expected value
    def factors(self, t: int) -> list[float]:
        """Seasonal factor per slot: the median ratio of each value to its local level (a centred median of
        one season), normalised to mean 1 — ratios to a local level survive trends and level shifts."""
        s = self.season
        if s == 1 or t < 2 * s:
            return [1.0] * s
        if t - self._factors_at < max(1, s // 7):
            return self._factors
        lo = max(0, t - 4 * s)
        half = s // 2
        ratios: list[list[float]] = [[] for _ in range(s)]
        for i in range(lo, t):
            a = max(lo, min(i - half, t - s))
            local = statistics.median(self.clean[a : a + s])
            if local > 0:
                ratios[i % s].append(self.clean[i] / local)
        f = [statistics.median(r) if r else 1.0 for r in ratios]
        mean = sum(f) / s
        f = [min(max(x / mean, 0.0), 10.0) for x in f] if mean > 0 else [1.0] * s
        self._factors, self._factors_at = f, t
        return f

    def deseason(self, lo: int, hi: int, f: list[float], extra: float | None = None) -> list[float]:
        out = [self.clean[i] / f[i % self.season] for i in range(max(lo, 0), hi) if f[i % self.season] >= 0.05]
        if extra is not None and f[hi % self.season] >= 0.05:
            out.append(extra / f[hi % self.season])
        return out

    def expected(self, t: int, edge: int | None) -> tuple[float, float, float] | None:
        """(expected, expected without the month-edge factor, level) at period ``t``; None without history."""
        if t < 3:
            return None
        f = self.factors(t)
        lw = self.level_w
        d = self.deseason(t - lw, t, f) or self.clean[max(0, t - lw) : t]
        level = statistics.median(d)
        gap = 3 * lw
        if t >= gap + lw:  # damped long-window trend, projected from the window's centre to t
            old = self.deseason(t - gap - lw, t - gap, f)
            if old:
                slope = (level - statistics.median(old)) / gap
                level += 0.5 * slope * (lw + 1) / 2
        level = max(level, 0.0)
        base = level * f[t % self.season]
        exp = base
        if edge is not None:  # a recurring month-edge batch job: add its usual excess (in units of the level)
            excess = self.edge_excess.get(edge)
            if excess and (min(e for e, _ in excess) > 0.5 or max(e for e, _ in excess) < -0.33):
                exp = max(base + level * statistics.median(e for e, _ in excess), 0.0)
        return exp, base, level

    # ------------------------------------------------------------------ one step
    def step(self, x: float, edge: int | None, suppressed: bool) -> _Hit | None:
        d = self.d
        t = len(self.values)
        self.values.append(x)
        self.clean.append(x)
        self.rel.append(None)
        got = self.expected(t, edge)
        if got is None:
            return None
        exp, base, level = got
        if edge is not None and level > 0 and self.incident is None:  # learn month-edge jobs outside incidents
            self.edge_excess[edge].append(((x - base) / level, x - base))
        rel = (x - exp) / max(exp, 0.25 * level, 1e-9)  # the relative change (its gate)
        c = 0.1 * level + 1e-9  # costs are multiplicative: score the log ratio (a drop to zero stays finite)
        lr = math.log(max(x, 0.0) + c) - math.log(exp + c)
        past = [r for r in self.rel[max(0, t - self.hist_w) : t] if r is not None]
        if len(past) >= 5:
            centre, scale = _mad(past)
        else:
            centre, scale = 0.0, 0.25
        scale = max(scale, d.min_rel_scale)
        z = (lr - centre) / scale
        direction = 1 if x >= exp else -1
        if self.incident is not None:
            start, inc_dir = self.incident
            if direction == inc_dir and abs(z) >= d.z_exit_v:
                if t - start + 1 > d.accept_after:  # a lasting change: accept it as the new normal
                    for i in range(start, t):
                        self.clean[i] = self.values[i]
                    self.incident = None
                    self.cooldown_until = t + d.cooldown
                    self.last_change = t
                else:
                    self.clean[t] = exp
                return None
            self.incident = None
            self.cooldown_until = t + d.cooldown
            self.last_change = t
        if self.season == 1 or t >= 2 * self.season:  # residuals of the seasonal model only
            self.rel[t] = lr
        if t < d.warmup_n:
            return None
        gates = abs(z) >= d.z_threshold and abs(rel) * 100 >= d.min_change and abs(x - exp) >= d.min_impact_f
        if gates:  # an incident (kept out of the history) even when it is not alerted
            self.incident = (t, direction)
            self.last_change = t
            self.clean[t] = exp
            self.rel[t] = None
            if suppressed or t < self.cooldown_until or (direction < 0 and not d.drops):
                return None
            self.last_alert = t
            return _Hit(t, exp, z, "spike" if direction > 0 else "drop")
        return self._drift(t, x, scale, suppressed)

    def _drift(self, t: int, x: float, scale: float, suppressed: bool) -> _Hit | None:
        """Slow change: the recent median against the level two weeks back (ramps a one-step check adapts to)."""
        d = self.d
        lw = self.level_w
        lo = t - 2 * lw - 3
        if not d.drift or lo < 0 or max(self.last_alert, self.last_change) >= lo or t < self.cooldown_until:
            return None
        f = self.factors(t)
        recent = self.deseason(t - 2, t, f, extra=x)
        before = self.deseason(lo, t - lw - 3, f)
        if len(recent) < 2 or len(before) < 3:
            return None
        r, b = statistics.median(recent), statistics.median(before)
        if b <= 0:
            return None
        change = r / b - 1
        exp = b * f[t % self.season]
        zd = math.log((r + 0.1 * b) / (1.1 * b)) / scale
        if (
            abs(zd) >= d.z_threshold
            and abs(change) * 100 >= max(d.min_change, d.drift_min_change)
            and abs(x - exp) >= d.min_impact_f
            and (change > 0 or d.drops)
            and (x > exp) == (change > 0)
        ):
            self.last_alert = t
            if suppressed:
                return None
            return _Hit(t, exp, zd, "drift")
        return None


def _to_decimal_amount(v: Any) -> Decimal:
    return v if isinstance(v, Decimal) else Decimal(str(v))


def _estimate(x: float) -> Decimal:
    """A statistical estimate as money: 6 decimals (it is an estimate, not a bill)."""
    return Decimal(repr(round(x, 6))).normalize() if math.isfinite(x) else Decimal(0)


def _pct_of(actual: Decimal, expected: Decimal) -> Decimal:
    with localcontext(MONEY_CONTEXT):
        if expected <= 0:
            return Decimal(0) if actual <= 0 else Decimal(999999)
        return (actual * 100 / expected).quantize(Decimal("0.1"), rounding=ROUND_HALF_EVEN)


@dataclass
class RobustDetector:
    """Seasonal, trend-aware robust detector with statistical, relative and absolute gates (module docstring).

    :param granularity: ``day`` (weekday seasonality, month-edge batch days), ``hour`` (hour-of-week) or
        ``run`` (a sequence of runs, no calendar).
    :param z_threshold: robust z-score gate (``|z| >=``).
    :param min_change_pct: relative change gate, % of the expected value.
    :param min_impact: absolute impact gate, in the series' currency.
    :param warmup: no alerts before this many observations (default: two seasons + a level window: 21 days,
        360 hours; 10 runs).
    :param cooldown: periods without a new alert after an incident ends.
    :param accept_after: periods after which a lasting change becomes the new normal.
    :param z_exit: hysteresis: an incident lasts while ``|z| >= z_exit`` (default ``z_threshold / 2``).
    :param drops: also alert on drops (a pipeline that stopped costing is news too).
    :param drift: run the slow-drift check; ``drift_min_change_pct`` is its relative gate.
    :param history_days: days read from the ledger by :meth:`scan`.
    """

    granularity: str = "day"
    z_threshold: float = 4
    min_change_pct: Decimal = Decimal(30)
    min_impact: Decimal = Decimal(1)
    warmup: int | None = None
    cooldown: int = 3
    accept_after: int = 7
    z_exit: float | None = None
    drops: bool = True
    drift: bool = True
    drift_min_change_pct: Decimal = Decimal(40)
    min_rel_scale: float = 0.02
    history_days: int = 70
    name: str = field(default="robust", init=False)
    # resolved settings (floats for the model)
    warmup_n: int = field(default=0, init=False, repr=False)
    z_exit_v: float = field(default=0.0, init=False, repr=False)
    min_change: float = field(default=0.0, init=False, repr=False)
    drift_min_change: float = field(default=0.0, init=False, repr=False)
    min_impact_f: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.granularity not in _SHAPE:
            raise ValueError(f"granularity {self.granularity!r}: use one of {', '.join(_SHAPE)}")
        season = _SHAPE[self.granularity][0]
        # default warm-up: two seasons to learn the seasonal factors, then a level window of residuals
        default_warmup = 2 * season + _SHAPE[self.granularity][1] if season > 1 else 10
        self.warmup_n = self.warmup if self.warmup is not None else default_warmup
        self.z_exit_v = self.z_exit if self.z_exit is not None else self.z_threshold / 2
        self.min_change = float(self.min_change_pct)
        self.drift_min_change = float(self.drift_min_change_pct)
        self.min_impact_f = float(self.min_impact)

    # ------------------------------------------------------------------ series API
    def detect_series(
        self,
        values_by_period: Mapping[dt.datetime, Any] | Sequence[tuple[dt.datetime, Any]],
        *,
        scope: tuple[tuple[str, str], ...] = (("series", "-"),),
        currency: str = "USD",
        children: Mapping[str, Mapping[dt.datetime, Any]] | None = None,
        child_dim: str = "task",
        planned: Iterable[tuple[dt.datetime, dt.datetime]] = (),
        since: dt.datetime | None = None,
    ) -> list[Anomaly]:
        """Anomalies of one series, oldest first (pure Python, no ledger).

        :param values_by_period: period start (UTC) -> cost (Decimal, int, str or float). ``day`` and ``hour``
            series are completed with zeros between the first and the last period; ``run`` series are taken in
            start order as given.
        :param scope: the scope the anomalies carry, for example ``(("dag", "etl"),)``.
        :param currency: the currency of every value (one series is one currency).
        :param children: child dimension value -> its own series (same periods); the root cause is the child
            whose cost moved most in the anomaly's direction.
        :param child_dim: the children's dimension name (``task``, ``service``, ``sku``, ``resource`` ...).
        :param planned: ``[start, end)`` windows of planned activity: no alert starts inside them.
        :param since: only return anomalies whose period starts at or after this (the history still counts).
        """
        items = sorted(values_by_period.items() if isinstance(values_by_period, Mapping) else values_by_period)
        if not items:
            return []
        starts, amounts = self._complete(items)
        windows = sorted(planned)
        model = _SeriesModel(self)
        out: list[Anomaly] = []
        for t, (start, amount) in enumerate(zip(starts, amounts, strict=True)):
            edge = _month_edge(start.date()) if self.granularity == "day" else None
            sup = any(a <= start < b for a, b in windows)
            hit = model.step(float(amount), edge, sup)
            if hit is None or (since is not None and start < since):
                continue
            end = (
                start + _STEP[self.granularity]
                if self.granularity in _STEP
                else (starts[t + 1] if t + 1 < len(starts) else start)
            )
            expected = _estimate(hit.expected)
            rc = self._root_cause(children, child_dim, starts, t, hit, currency) if children else None
            out.append(
                Anomaly(
                    scope=scope,
                    window_start=start,
                    window_end=end,
                    expected=Money(expected, currency),
                    actual=Money(amount, currency),
                    score=_pct_of(amount, expected),
                    detector=self.name,
                    root_cause=rc,
                    zscore=Decimal(repr(round(hit.z, 2))) if math.isfinite(hit.z) else Decimal(999999),
                    kind=hit.kind,
                    granularity=self.granularity,
                )
            )
        return out

    def _complete(self, items: list[tuple[dt.datetime, Any]]) -> tuple[list[dt.datetime], list[Decimal]]:
        if self.granularity not in _STEP:
            return [s for s, _ in items], [_to_decimal_amount(v) for _, v in items]
        step = _STEP[self.granularity]
        have = {s: _to_decimal_amount(v) for s, v in items}
        starts, amounts = [], []
        cur, last = items[0][0], items[-1][0]
        while cur <= last:
            starts.append(cur)
            amounts.append(have.get(cur, Decimal(0)))
            cur += step
        return starts, amounts

    def _root_cause(
        self,
        children: Mapping[str, Mapping[dt.datetime, Any]],
        child_dim: str,
        starts: list[dt.datetime],
        t: int,
        hit: _Hit,
        currency: str,
    ) -> tuple[str, str, Money] | None:
        sign = 1 if hit.kind != "drop" and not (hit.kind == "drift" and hit.z < 0) else -1
        best: tuple[float, str, Decimal] | None = None
        for name, series in children.items():
            m = _SeriesModel(self)
            vals = [float(_to_decimal_amount(series.get(s, 0))) for s in starts[: t + 1]]
            m.clean = vals[:t]
            m.values = vals[:t]
            got = m.expected(t, None)
            if got is None:
                continue
            delta = vals[t] - got[0]
            if best is None or sign * delta > best[0]:
                best = (sign * delta, name, _to_decimal_amount(series.get(starts[t], 0)) - _estimate(got[0]))
        if best is None or best[0] <= 0:
            return None
        return child_dim, best[1], Money(best[2], currency)

    # --------------------------------------------------------------------- ledger
    def scan(
        self,
        ledger: Any,
        day: dt.date,
        dims: Sequence[str] = ("team", "dag", "platform"),
        *,
        lookback: int = 1,
        **filters: Any,
    ) -> list[Anomaly]:
        """Anomalies whose day is in ``[day - lookback + 1, day]`` (UTC) for each value of each dimension.

        The same shape as :meth:`BaselineDetector.scan`. Reads ``history_days`` of daily cost per scope; planned
        labels in the ledger's feedback table suppress their scope while active.
        """
        if self.granularity != "day":
            raise ValueError("scan reads daily costs from the ledger; use detect_series for hour or run series")
        end = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) + dt.timedelta(days=1)
        start = end - dt.timedelta(days=self.history_days + lookback)
        since = end - dt.timedelta(days=lookback)
        planned = planned_windows(ledger)
        out: list[Anomaly] = []
        for dim in dims:
            agg = aggregate_ledger(ledger, [dim, "day"], start=start, end=end, **filters)
            series: dict[tuple[str, str], dict[dt.datetime, Decimal]] = defaultdict(dict)
            for g in agg.groups:
                series[(g.keys[0], g.currency)][_day_start(g.keys[1])] = g.amount
            found: list[tuple[str, str, Anomaly]] = []
            for (value, cur), by_day in series.items():
                by_day.setdefault(end - dt.timedelta(days=1), Decimal(0))  # a scope silent today is a zero day
                scope = ((dim, value),)
                found += [
                    (value, cur, a)
                    for a in self.detect_series(
                        by_day, scope=scope, currency=cur, planned=planned.get(scope_text(scope), ()), since=since
                    )
                ]
            if not found:
                continue
            child = ROOT_CAUSE_CHILD.get(dim, "service")
            kids: dict[tuple[str, str], dict[str, dict[dt.datetime, Decimal]]] = defaultdict(lambda: defaultdict(dict))
            for g in aggregate_ledger(ledger, [dim, child, "day"], start=start, end=end, **filters).groups:
                kids[(g.keys[0], g.currency)][g.keys[1]][_day_start(g.keys[2])] = g.amount
            for value, cur, a in found:
                full = sorted(series[(value, cur)])
                starts, _ = self._complete([(s, 0) for s in full])
                t = starts.index(a.window_start)
                hit = _Hit(t, float(a.expected.amount), 0.0 if a.zscore is None else float(a.zscore), a.kind or "spike")
                rc = self._root_cause(kids[(value, cur)], child, starts, t, hit, cur)
                out.append(_with_root_cause(a, rc))
        out.sort(key=lambda a: (-abs(a.impact.amount), a.dedupe_key))
        return out


def _day_start(key: str) -> dt.datetime:
    d = dt.date.fromisoformat(key)
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC)


def _with_root_cause(a: Anomaly, rc: tuple[str, str, Money] | None) -> Anomaly:
    from dataclasses import replace

    return replace(a, root_cause=rc)


def detect_series(
    values_by_period: Mapping[dt.datetime, Any] | Sequence[tuple[dt.datetime, Any]],
    *,
    scope: tuple[tuple[str, str], ...] = (("series", "-"),),
    currency: str = "USD",
    children: Mapping[str, Mapping[dt.datetime, Any]] | None = None,
    child_dim: str = "task",
    planned: Iterable[tuple[dt.datetime, dt.datetime]] = (),
    since: dt.datetime | None = None,
    **settings: Any,
) -> list[Anomaly]:
    """:meth:`RobustDetector.detect_series` with a detector built from ``settings`` (its keyword arguments)."""
    return RobustDetector(**settings).detect_series(
        values_by_period,
        scope=scope,
        currency=currency,
        children=children,
        child_dim=child_dim,
        planned=planned,
        since=since,
    )


def detector_from_config(cfg: Any) -> BaselineDetector | RobustDetector:
    """The detector ``anomaly.detector`` selects (``robust`` by default; ``threshold_pct`` is the seed's rule).

    :param cfg: an :class:`~finops_provider.core.config.AnomalyConfig`.
    """
    if getattr(cfg, "detector", "robust") == "threshold_pct":
        return BaselineDetector(cfg.threshold_pct, cfg.min_impact, cfg.baseline_periods)
    return RobustDetector(
        z_threshold=float(getattr(cfg, "z_threshold", 4.0)),
        min_change_pct=getattr(cfg, "min_change_pct", Decimal(30)),
        min_impact=cfg.min_impact,
        warmup=getattr(cfg, "warmup_periods", None),
        cooldown=getattr(cfg, "cooldown_periods", 3),
    )


# ====================================================================== streaming EWMA
class _EwmaState:
    """O(1) state of one (scope, currency): 10 slots (measured size in :data:`EwmaDetector.STATE_BYTES`)."""

    __slots__ = ("cur", "currency", "dev", "fired", "imputed", "mean", "n", "period", "quiet_until", "until")

    def __init__(self, period: int, currency: str) -> None:
        self.period = period
        self.currency = currency
        self.cur = Decimal(0)  # exact running total of the open period
        self.mean: float | None = None  # EWMA of closed periods
        self.dev = 0.0  # EWMA of |relative residual|
        self.n = 0  # closed periods seen
        self.fired = -1  # period index of the last alert
        self.quiet_until = -1
        self.imputed = 0  # consecutive anomalous periods folded as their expectation
        self.until: dt.datetime | None = None  # planned activity: no alert before this


class EwmaDetector:
    """Streaming variant of the robust detector: EWMA level and EWMA absolute relative deviation per scope.

    Call :meth:`update` with the running total of a scope's current period (as often as you like); a newer
    ``period_start`` closes the previous period into the EWMA (empty periods in between count as zero, at most
    ``max_gap``). The open period is checked against the same three gates as the batch detector (robust
    z-score, relative change, absolute impact) after ``warmup`` closed periods; an alert silences the scope for
    ``cooldown`` periods, and an anomalous closed period is folded as its expectation (up to ``accept_after``
    periods in a row, then a lasting change is accepted). Only rises are checked on the open period (a period
    still filling is always below its expectation early on).

    State is O(1) per scope: one ``_EwmaState`` of 10 slots, about 400 bytes with its numbers
    (:data:`STATE_BYTES`, measured by the tests with ``tracemalloc``).
    """

    name = "ewma"
    STATE_BYTES = 400

    def __init__(
        self,
        *,
        period: dt.timedelta = dt.timedelta(hours=1),
        alpha: float = 0.1,
        z_threshold: float = 4.0,
        min_change_pct: Decimal = Decimal(30),
        min_impact: Decimal = Decimal(1),
        warmup: int = 24,
        cooldown: int = 3,
        accept_after: int = 6,
        max_gap: int = 48,
        min_rel_scale: float = 0.02,
    ) -> None:
        self.period = period
        self._secs = int(period.total_seconds())
        self.alpha = alpha
        self.z_threshold = z_threshold
        self.min_change = float(min_change_pct)
        self.min_impact = Decimal(min_impact)
        self.warmup = warmup
        self.cooldown = cooldown
        self.accept_after = accept_after
        self.max_gap = max_gap
        self.min_rel_scale = min_rel_scale
        self.states: dict[tuple[tuple[tuple[str, str], ...], str], _EwmaState] = {}
        self.granularity = "hour" if self._secs == 3600 else "day" if self._secs == 86400 else "run"

    def _index(self, t: dt.datetime) -> int:
        return int((t - _EPOCH).total_seconds()) // self._secs

    def suppress(self, scope: tuple[tuple[str, str], ...], until: dt.datetime, currency: str = "USD") -> None:
        """Planned activity: no alert for ``scope`` on periods starting before ``until``."""
        key = (scope, currency)
        st = self.states.get(key)
        if st is None:
            st = self.states[key] = _EwmaState(self._index(until), currency)
            st.cur = Decimal(0)
        st.until = until

    def _close(self, st: _EwmaState, new_period: int) -> None:
        x = float(st.cur)
        a = self.alpha
        if st.mean is None:
            st.mean = x
        else:
            m = st.mean
            rel = (x - m) / max(m, 1e-9)
            if st.fired == st.period or (st.imputed and abs(rel) / max(1.2533 * st.dev, self.min_rel_scale) >= 2):
                st.imputed += 1
                if st.imputed > self.accept_after:  # a lasting change: re-level on it
                    st.mean, st.imputed = x, 0
            else:
                st.imputed = 0
                st.dev += a * (min(abs(rel), 5.0) - st.dev)
                st.mean = m + a * (x - m)
        gap = min(new_period - st.period - 1, self.max_gap)
        if gap > 0:
            st.mean *= (1 - a) ** gap
        st.n += 1 + max(gap, 0)
        st.period = new_period
        st.cur = Decimal(0)

    def update(
        self, scope: tuple[tuple[str, str], ...], period_start: dt.datetime, amount: Any, *, currency: str = "USD"
    ) -> Anomaly | None:
        """Fold the running total ``amount`` of the period starting at ``period_start``; an :class:`Anomaly`
        the first time that period passes every gate, else None.

        :param scope: for example ``(("dag", "etl"),)``.
        :param period_start: start of the period (UTC); earlier periods than the current one are ignored.
        :param amount: the period's total so far (exact: Decimal, int or str), in ``currency``.
        """
        p = self._index(period_start)
        key = (scope, currency)
        st = self.states.get(key)
        value = _to_decimal_amount(amount)
        if st is None:
            st = self.states[key] = _EwmaState(p, currency)
        if p > st.period:
            self._close(st, p)
        elif p < st.period:
            return None
        st.cur = value
        if st.mean is None or st.n < self.warmup or p < st.quiet_until or st.fired == p:
            return None
        if st.until is not None and period_start < st.until:
            return None
        exp = st.mean
        x = float(value)
        rel = (x - exp) / max(exp, 1e-9)
        z = rel / max(1.2533 * st.dev, self.min_rel_scale)
        expected = _estimate(exp)
        if z < self.z_threshold or rel * 100 < self.min_change or value - expected < self.min_impact:
            return None
        st.fired = p
        st.quiet_until = p + self.cooldown + 1
        start = _EPOCH + dt.timedelta(seconds=p * self._secs)
        return Anomaly(
            scope=scope,
            window_start=start,
            window_end=start + self.period,
            expected=Money(expected, currency),
            actual=Money(value, currency),
            score=_pct_of(value, expected),
            detector=self.name,
            zscore=Decimal(repr(round(z, 2))),
            kind="spike",
            granularity=self.granularity,
        )

    def evict(self, before: dt.datetime) -> int:
        """Drop scopes whose open period started before ``before`` (idle); returns how many."""
        cut = self._index(before)
        gone = [k for k, st in self.states.items() if st.period < cut]
        for k in gone:
            del self.states[k]
        return len(gone)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# ====================================================================== feedback
LABELS = ("true", "false", "planned")


def scope_text(scope: Iterable[tuple[str, str]]) -> str:
    """The scope as written in a dedupe key: ``team=data`` or ``dag=etl,task=load``."""
    return ",".join(f"{k}={v}" for k, v in scope)


def parse_dedupe_key(key: str) -> tuple[str, dt.datetime]:
    """(scope text, window start) of an anomaly ``dedupe_key`` such as ``anomaly|dag=etl|2024-09-15T00``."""
    parts = key.split("|")
    if len(parts) != 3 or parts[0] != "anomaly" or not parts[1]:
        raise ValueError(f"{key!r} is not an anomaly key; copy it from `finops anomalies list` (anomaly|SCOPE|TIME)")
    try:
        start = dt.datetime.strptime(parts[2], "%Y-%m-%dT%H").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(f"{key!r}: the window {parts[2]!r} is not YYYY-MM-DDTHH") from None
    return parts[1], start


def label_anomaly(
    ledger: Any,
    dedupe_key: str,
    label: str,
    *,
    note: str | None = None,
    who: str | None = None,
    until: dt.datetime | None = None,
    at: dt.datetime | None = None,
) -> dict[str, Any]:
    """Store a user's verdict on an anomaly (the CLI and the HTTP API call this).

    ``planned`` suppresses alerts of the anomaly's scope from its window start until ``until`` (default: 7 days
    later). Labels are appended; the latest label of a key is its verdict.

    :param ledger: a :class:`~finops_provider.core.ledger.Ledger`.
    :param dedupe_key: the anomaly's ``dedupe_key``.
    :param label: ``true`` (a real incident), ``false`` (a false alarm) or ``planned``.
    :return: the stored row (JSON-ready).
    """
    from finops_provider.core.schema import anomaly_feedback

    if label not in LABELS:
        raise ValueError(f"label {label!r}: use one of {', '.join(LABELS)}")
    scope, start = parse_dedupe_key(dedupe_key)
    if until is not None and until.tzinfo is None:
        until = until.replace(tzinfo=dt.UTC)
    if label == "planned" and until is None:
        until = start + DEFAULT_PLANNED
    if until is not None and until <= start:
        raise ValueError(f"until {until.isoformat()} is not after the anomaly's window start {start.isoformat()}")
    row = {
        "dedupe_key": dedupe_key,
        "scope": scope,
        "window_start": start,
        "label": label,
        "note": note,
        "who": who,
        "at": at or dt.datetime.now(dt.UTC),
        "until": until if label == "planned" else None,
    }
    with ledger.engine.begin() as conn:
        conn.execute(anomaly_feedback.insert().values(**row))
    log.info("anomaly %s labelled %s", dedupe_key, label)
    return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row.items()}


def anomaly_labels(ledger: Any, *, dedupe_key: str | None = None, scope: str | None = None) -> list[dict[str, Any]]:
    """Stored labels, oldest first (optionally of one key or one scope text)."""
    import sqlalchemy as sa

    from finops_provider.core.schema import anomaly_feedback as fb

    q = sa.select(fb).order_by(fb.c.at, fb.c.id)
    if dedupe_key is not None:
        q = q.where(fb.c.dedupe_key == dedupe_key)
    if scope is not None:
        q = q.where(fb.c.scope == scope)
    with ledger.engine.connect() as conn:
        return [dict(m) for m in conn.execute(q).mappings()]


def planned_windows(ledger: Any) -> dict[str, list[tuple[dt.datetime, dt.datetime]]]:
    """Scope text -> ``[start, until)`` windows of planned activity (the latest label of each key wins)."""
    latest: dict[str, dict[str, Any]] = {}
    for row in anomaly_labels(ledger):
        latest[row["dedupe_key"]] = row
    out: dict[str, list[tuple[dt.datetime, dt.datetime]]] = defaultdict(list)
    for row in latest.values():
        if row["label"] == "planned" and row["until"] is not None:
            out[row["scope"]].append((row["window_start"], row["until"]))
    return dict(out)
