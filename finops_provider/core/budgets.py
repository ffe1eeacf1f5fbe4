"""Budgets as code: scope, period, amount + currency, graded thresholds mapped to actions.

Evaluation compares ACTUAL spend and a FORECASTED period-end spend (burn rate) with each threshold and
returns :class:`Breach` objects whose ``dedupe_key`` (budget, period, basis, threshold) is stable, so the
same breach is acted on once however often it is evaluated.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from finops_provider.core.config import BudgetConfig, FinOpsConfig, Threshold
from finops_provider.core.money import MONEY_CONTEXT, Money, MoneyBag
from finops_provider.core.records import COST_BASES

#: budget scope key -> Ledger filter name
_SCOPE_FILTERS = {
    "dag": "dag_id",
    "task": "task_id",
    "job": "job_id",
    "team": "team",
    "cost_center": "cost_center",
    "platform": "platform",
    "service": "service",
}


def period_bounds(period: str, at: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """UTC ``[start, end)`` of the day / ISO week / month containing ``at``."""
    at = at.astimezone(dt.UTC)
    day = dt.datetime(at.year, at.month, at.day, tzinfo=dt.UTC)
    if period == "day":
        return day, day + dt.timedelta(days=1)
    if period == "week":
        start = day - dt.timedelta(days=day.weekday())
        return start, start + dt.timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        nxt = (start + dt.timedelta(days=32)).replace(day=1)
        return start, nxt
    raise ValueError(f"period {period!r} has no calendar bounds; use day, week or month (run budgets use the run)")


def burn_rate_forecast(actual: Money, start: dt.datetime, end: dt.datetime, now: dt.datetime) -> Money:
    """Linear burn-rate forecast of spend at ``end`` given ``actual`` spent from ``start`` to ``now``."""
    if now >= end:
        return actual
    elapsed = (now - start).total_seconds()
    if elapsed <= 0:
        return actual
    total = (end - start).total_seconds()
    with localcontext(MONEY_CONTEXT):
        return Money(actual.amount * Decimal(str(total)) / Decimal(str(elapsed)), actual.currency)


def breach_eta(actual: Money, limit: Money, start: dt.datetime, now: dt.datetime) -> dt.datetime | None:
    """When spend reaches ``limit`` at the current burn rate (None if never or already there)."""
    elapsed = (now - start).total_seconds()
    if actual.amount <= 0 or elapsed <= 0 or actual >= limit:
        return None
    with localcontext(MONEY_CONTEXT):
        secs = Decimal(str(elapsed)) * limit.amount / actual.amount
    return start + dt.timedelta(seconds=float(secs))


@dataclass(frozen=True)
class Breach:
    """A threshold crossed in one budget period. ``dedupe_key`` makes its actions happen once."""

    budget: str
    period: str
    period_start: dt.datetime
    period_end: dt.datetime
    threshold_pct: Decimal
    basis: str  # actual | forecasted
    actions: tuple[str, ...]
    budget_amount: Money
    actual: Money
    forecast: Money | None
    scope: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None

    @functools.cached_property  # read several times per breach on the stream's path (strftime: ~3 us)
    def dedupe_key(self) -> str:
        p = self.run_id if self.period == "run" else self.period_start.strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{self.budget}|{self.period}:{p}|{self.basis}|{self.threshold_pct.normalize():f}"

    @property
    def utilisation_pct(self) -> Decimal:
        value = self.actual if self.basis == "actual" or self.forecast is None else self.forecast
        return pct(value.amount, self.budget_amount.amount)

    def to_json(self) -> dict[str, Any]:
        return {
            "dedupe_key": self.dedupe_key,
            "budget": self.budget,
            "scope": self.scope,
            "period": self.period,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "run_id": self.run_id,
            "threshold_pct": str(self.threshold_pct),
            "basis": self.basis,
            "actions": list(self.actions),
            "budget_amount": self.budget_amount.to_json(),
            "actual": self.actual.to_json(),
            "forecast": self.forecast.to_json() if self.forecast is not None else None,
            "utilisation_pct": str(self.utilisation_pct),
        }


def pct(value: Decimal, of: Decimal) -> Decimal:
    if of == 0:
        return Decimal(0)
    with localcontext(MONEY_CONTEXT):
        return (value * 100 / of).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)


@dataclass
class BudgetStatus:
    """One budget in one period: spend, forecast and the thresholds crossed."""

    budget: BudgetConfig
    period_start: dt.datetime
    period_end: dt.datetime
    actual: Money
    forecast: Money
    breaches: list[Breach]
    other_currencies: dict[str, str] = field(default_factory=dict)  # spend in scope not in budget currency
    run_id: str | None = None
    forecast_model: str = "linear"  # linear | seasonal (core/forecast.py, with >= 14 days of history)
    forecast_eta: dt.datetime | None = None  # the seasonal model's breach ETA

    @property
    def utilisation_pct(self) -> Decimal:
        return pct(self.actual.amount, self.budget.amount)

    @property
    def forecast_pct(self) -> Decimal:
        return pct(self.forecast.amount, self.budget.amount)

    def eta(self, now: dt.datetime) -> dt.datetime | None:
        if self.forecast_model == "seasonal":
            return self.forecast_eta if self.forecast_eta is not None and self.forecast_eta < self.period_end else None
        eta = breach_eta(self.actual, Money(self.budget.amount, self.budget.currency), self.period_start, now)
        return eta if eta is not None and eta < self.period_end else None

    def to_json(self, now: dt.datetime | None = None) -> dict[str, Any]:
        eta = self.eta(now) if now else None
        return {
            "budget": self.budget.name,
            "scope": self.budget.scope,
            "period": self.budget.period,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "amount": Money(self.budget.amount, self.budget.currency).to_json(),
            "actual": self.actual.to_json(),
            "forecast": self.forecast.to_json(),
            "utilisation_pct": str(self.utilisation_pct),
            "forecast_pct": str(self.forecast_pct),
            "breach_eta": eta.isoformat() if eta else None,
            "forecast_model": self.forecast_model,
            "breaches": [b.to_json() for b in self.breaches],
            "other_currencies": self.other_currencies,
        }


def crossed(budget: BudgetConfig, actual: Money, forecast: Money | None) -> list[Threshold]:
    """Thresholds reached by ``actual`` (basis actual) or ``forecast`` (basis forecasted)."""
    out = []
    for t in budget.thresholds:
        value = actual if t.basis == "actual" else forecast
        if value is None:
            continue
        with localcontext(MONEY_CONTEXT):
            limit = budget.amount * t.pct / 100
        if value.amount >= limit:
            out.append(t)
    return out


def evaluate(
    budget: BudgetConfig,
    actual: Money,
    *,
    period_start: dt.datetime,
    period_end: dt.datetime,
    now: dt.datetime,
    run_id: str | None = None,
    forecast: Money | None = None,
) -> BudgetStatus:
    """Evaluate one budget given the spend so far; pure (no I/O)."""
    if actual.currency != budget.currency:
        raise ValueError(f"budget {budget.name} is in {budget.currency}, spend is in {actual.currency}")
    if forecast is None:
        forecast = actual if budget.period == "run" else burn_rate_forecast(actual, period_start, period_end, now)
    amount = Money(budget.amount, budget.currency)
    breaches = [
        Breach(
            budget=budget.name,
            period=budget.period,
            period_start=period_start,
            period_end=period_end,
            threshold_pct=t.pct,
            basis=t.basis,
            actions=t.actions,
            budget_amount=amount,
            actual=actual,
            forecast=forecast,
            scope=dict(budget.scope),
            run_id=run_id,
        )
        for t in crossed(budget, actual, forecast)
    ]
    return BudgetStatus(budget, period_start, period_end, actual, forecast, breaches, run_id=run_id)


def _tag_match(scope: dict[str, Any], tags: dict[str, str]) -> bool:
    want = scope.get("tag") or {}
    return all(tags.get(k) == str(v) for k, v in want.items())


def scope_spend(
    ledger: Any,
    budget: BudgetConfig,
    start: dt.datetime | None,
    end: dt.datetime | None,
    *,
    run_id: str | None = None,
) -> tuple[Money, dict[str, str]]:
    """Spend in the budget's scope and window: (spend in budget currency, other currencies untouched)."""
    filters: dict[str, Any] = {"start": start, "end": end}
    for k, v in budget.scope.items():
        if k in _SCOPE_FILTERS:
            filters[_SCOPE_FILTERS[k]] = str(v)
    if run_id is not None:
        filters["run_id"] = run_id
    attr = COST_BASES[budget.cost_basis]
    if "tag" in budget.scope:  # tags are JSON: matched here, row by row
        bag = MoneyBag()
        for amount, cur, tags in ledger.rows([attr, "billing_currency", "tags"], **filters):
            if amount is not None and _tag_match(budget.scope, tags):
                bag.add_raw(amount, cur)
    else:  # summed exactly by the database: no row of the period crosses into Python
        bag = ledger.totals(budget.cost_basis, **filters)
    others = {m.currency: str(m.amount) for m in bag.items() if m.currency != budget.currency}
    return bag.get(budget.currency), others


def scope_daily(ledger: Any, budget: BudgetConfig, start: dt.datetime, end: dt.datetime) -> dict[dt.date, Decimal]:
    """Daily spend (UTC days) in the budget's scope, basis and currency over ``[start, end)``."""
    filters: dict[str, Any] = {"start": start, "end": end}
    for k, v in budget.scope.items():
        if k in _SCOPE_FILTERS:
            filters[_SCOPE_FILTERS[k]] = str(v)
    if "tag" not in budget.scope:  # summed per day by the database
        return ledger.daily_totals(budget.cost_basis, currency=budget.currency, **filters)
    filters["currency"] = budget.currency
    cols = [COST_BASES[budget.cost_basis], "charge_period_start", "tags"]
    out: dict[dt.date, Decimal] = {}
    with localcontext(MONEY_CONTEXT):
        for row in ledger.rows(cols, **filters):
            if row[0] is None or not _tag_match(budget.scope, row[2]):
                continue
            d = row[1].astimezone(dt.UTC).date()
            out[d] = out.get(d, Decimal(0)) + row[0]
    return out


def seasonal_forecast(
    ledger: Any, budget: BudgetConfig, start: dt.datetime, end: dt.datetime, now: dt.datetime, actual: Money
) -> tuple[Money | None, dt.datetime | None]:
    """(forecast, breach ETA) from :func:`finops_provider.core.forecast.forecast_period_end` with weekly
    seasonality; (None, None) when the scope has fewer than 14 days with spend in the last 8 weeks (then the
    linear burn rate applies)."""
    from finops_provider.core.forecast import forecast_period_end, has_seasonal_history

    if now >= end:
        return None, None
    daily = scope_daily(ledger, budget, min(start, now - dt.timedelta(days=56)), end)
    if not has_seasonal_history(daily, now):
        return None, None
    limit = Money(budget.amount, budget.currency)
    fc, eta = forecast_period_end(daily, start, end, now, currency=budget.currency, limit=limit)
    return (fc if fc >= actual else actual), eta


class BudgetEngine:
    """Evaluates configured budgets against the ledger (batch feed; streaming uses :func:`evaluate`)."""

    def __init__(self, config: FinOpsConfig, ledger: Any) -> None:
        self.config = config
        self.ledger = ledger

    def evaluate_all(
        self,
        now: dt.datetime,
        *,
        run_id: str | None = None,
        dag_id: str | None = None,
        names: Iterable[str] | None = None,
    ) -> list[BudgetStatus]:
        """Evaluate every calendar budget for the period containing ``now``; run budgets need ``run_id``."""
        wanted = set(names) if names is not None else None
        out: list[BudgetStatus] = []
        for b in self.config.budgets:
            if wanted is not None and b.name not in wanted:
                continue
            if dag_id is not None and "dag" in b.scope and b.scope["dag"] != dag_id:
                continue
            if b.period == "run":
                if run_id is None:
                    continue
                actual, others = scope_spend(self.ledger, b, None, None, run_id=run_id)
                st = evaluate(b, actual, period_start=now, period_end=now, now=now, run_id=run_id)
            else:
                start, end = period_bounds(b.period, now)
                actual, others = scope_spend(self.ledger, b, start, end)
                fc, eta = seasonal_forecast(self.ledger, b, start, end, now, actual)
                st = evaluate(b, actual, period_start=start, period_end=end, now=now, forecast=fc)
                if fc is not None:
                    st.forecast_model, st.forecast_eta = "seasonal", eta
            st.other_currencies = others
            out.append(st)
        return out

    def new_breaches(self, statuses: Iterable[BudgetStatus]) -> list[Breach]:
        """Claim every breach in the ledger; return only those claimed for the first time."""
        fresh = []
        for st in statuses:
            for b in st.breaches:
                if self.ledger.claim_breach(b):
                    fresh.append(b)
        return fresh
