"""Period-end spend forecast with weekly seasonality, and when a budget will be breached.

The model: a budget period's spend = what is already spent + for each remaining day its expected cost, where
expected cost = level × weekday factor × (1 + trend)^days-ahead.

* weekday factors: median cost of each weekday over the last 4 weeks / median of those 4 weeks (normalised to
  mean 1), so weekend dips and weekday peaks are projected, not averaged away;
* level: Σ cost / Σ weekday factor over the last 14 days, the most and least unusual day dropped — a month-start
  batch job or a one-day spike does not become the new burn rate;
* trend: Theil–Sen slope of weekly medians over up to 8 weeks, damped by half and capped at ±2 %/day.

With fewer than :data:`MIN_HISTORY_DAYS` days that have spend, it falls back to the linear burn rate
(:func:`finops_provider.core.budgets.burn_rate_forecast`). Money is ``Decimal``: the per-day expectations are
floats inside the model, turned into Decimal once (6 decimals) and added to the exact spend so far.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Mapping
from decimal import Decimal, localcontext
from typing import Any

from finops_provider.core.money import MONEY_CONTEXT, Money

#: days with spend needed (in the 8 weeks before ``now``) before the seasonal model replaces the linear one
MIN_HISTORY_DAYS = 14
_DAY = dt.timedelta(days=1)


def _amount(v: Any) -> Decimal:
    if isinstance(v, Money):
        return v.amount
    return v if isinstance(v, Decimal) else Decimal(str(v))


def _as_date(d: dt.date | dt.datetime) -> dt.date:
    return d.astimezone(dt.UTC).date() if isinstance(d, dt.datetime) else d


def has_seasonal_history(daily_amounts: Mapping[dt.date, Any], now: dt.datetime) -> bool:
    """Whether the seasonal model has enough history (:data:`MIN_HISTORY_DAYS` days with spend before today)."""
    today = _as_date(now)
    lo = today - dt.timedelta(days=56)
    return sum(1 for d, v in daily_amounts.items() if lo <= _as_date(d) < today and _amount(v) != 0) >= (
        MIN_HISTORY_DAYS
    )


class DailyModel:
    """Expected cost per future day, learnt from full days before ``today`` (see the module docstring)."""

    def __init__(self, daily: Mapping[dt.date, float], today: dt.date) -> None:
        days = [today - dt.timedelta(days=i) for i in range(56, 0, -1)]
        first = next((d for d in days if daily.get(d, 0.0) != 0.0), today)
        self.days = [d for d in days if d >= first]
        self.values = [daily.get(d, 0.0) for d in self.days]
        self.today = today
        last28 = list(zip(self.days[-28:], self.values[-28:], strict=True))
        base = statistics.median([v for _, v in last28]) if last28 else 0.0
        f = [1.0] * 7
        if base > 0 and len(last28) >= 14:
            for w in range(7):
                vals = [v for d, v in last28 if d.weekday() == w]
                if vals:
                    f[w] = max(statistics.median(vals) / base, 0.0)
            mean = sum(f) / 7
            f = [x / mean for x in f] if mean > 0 else [1.0] * 7
        self.factors = f
        recent = [(v, f[d.weekday()]) for d, v in zip(self.days[-14:], self.values[-14:], strict=True)]
        if len(recent) >= 5:  # drop the most and least unusual day (ratio to its weekday factor)
            ranked = sorted(recent, key=lambda vf: vf[0] / vf[1] if vf[1] else 0.0)
            recent = ranked[1:-1]
        weight = sum(fw for _, fw in recent)
        self.level = sum(v for v, _ in recent) / weight if weight > 0 else 0.0  # ratio of sums: unbiased totals
        weeks = []
        for k in range(8, 0, -1):
            chunk = [
                v / f[d.weekday()]
                for d, v in zip(self.days, self.values, strict=True)
                if today - dt.timedelta(days=7 * k) <= d < today - dt.timedelta(days=7 * (k - 1)) and f[d.weekday()]
            ]
            if len(chunk) == 7:
                weeks.append(statistics.median(chunk))
        slope = 0.0
        if len(weeks) >= 4 and self.level > 0:
            pairs = [(weeks[j] - weeks[i]) / (7 * (j - i)) for i in range(len(weeks)) for j in range(i + 1, len(weeks))]
            slope = 0.5 * statistics.median(pairs) / self.level
        self.trend = max(min(slope, 0.02), -0.02)

    def expected(self, day: dt.date) -> float:
        """Expected cost of ``day`` (on or after ``today``)."""
        ahead = (day - self.today).days + 7  # the level is centred about a week back
        return max(self.level * self.factors[day.weekday()] * (1 + self.trend) ** ahead, 0.0)


def forecast_period_end(
    daily_amounts: Mapping[dt.date, Any],
    period_start: dt.datetime,
    period_end: dt.datetime,
    now: dt.datetime,
    *,
    currency: str = "USD",
    limit: Money | None = None,
) -> tuple[Money, dt.datetime | None]:
    """Forecast the spend of ``[period_start, period_end)`` and when it reaches ``limit``.

    :param daily_amounts: UTC day -> spend that day (Decimal, str, int or :class:`Money` of ``currency``),
        including the days before ``period_start`` the model learns from (8 weeks is plenty) and today so far.
    :param period_start: start of the budget period (UTC midnight).
    :param period_end: end of the budget period (exclusive).
    :param now: the evaluation time; spend before it is actual, the rest is forecast.
    :param currency: the currency of the amounts.
    :param limit: the budget amount; the breach ETA is when actual + forecast reaches it.
    :return: (forecast spend at ``period_end``, breach ETA or None when never / already reached). Falls back to
        the linear burn rate with fewer than :data:`MIN_HISTORY_DAYS` days of spend.
    """
    from finops_provider.core.budgets import breach_eta, burn_rate_forecast

    d0, d_end = _as_date(period_start), _as_date(period_end)
    today = _as_date(now)
    spent = Decimal(0)
    with localcontext(MONEY_CONTEXT):
        for d, v in daily_amounts.items():
            if d0 <= _as_date(d) <= min(today, d_end - _DAY):
                spent += _amount(v)
    actual = Money(spent, currency)
    if now >= period_end:
        return actual, None
    if not has_seasonal_history(daily_amounts, now):
        fc = burn_rate_forecast(actual, period_start, period_end, now)
        eta = breach_eta(actual, limit, period_start, now) if limit is not None else None
        return fc, (eta if eta is not None and eta < period_end else None)
    model = DailyModel({_as_date(d): float(_amount(v)) for d, v in daily_amounts.items()}, today)
    # the rest of today, then each remaining day
    midnight = dt.datetime(today.year, today.month, today.day, tzinfo=dt.UTC)
    left_today = max((midnight + _DAY - now).total_seconds(), 0.0) / 86400
    steps: list[tuple[dt.datetime, float]] = []
    if today >= d0:
        steps.append((now, model.expected(today) * left_today))
    d = max(today + _DAY, d0)
    while d < d_end:
        steps.append((dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC), model.expected(d)))
        d += _DAY
    remaining = sum(x for _, x in steps)
    with localcontext(MONEY_CONTEXT):
        forecast = Money(spent + Decimal(repr(round(remaining, 6))), currency)
    return forecast, _eta(actual, limit, steps)


def _eta(actual: Money, limit: Money | None, steps: list[tuple[dt.datetime, float]]) -> dt.datetime | None:
    """When the running forecast reaches ``limit`` (interpolated within the day); None if never or already."""
    if limit is None or actual >= limit:
        return None
    need = float(limit.amount - actual.amount)
    for i, (start, x) in enumerate(steps):
        if x > 0 and x >= need:
            end = steps[i + 1][0] if i + 1 < len(steps) else start + _DAY
            return start + (end - start) * (need / x)
        need -= x
    return None
