"""Cost anomaly detection: the baseline detector with the seed's ``anomaly_threshold_pct`` meaning.

A period is anomalous when its cost is above ``threshold_pct`` % of the baseline (the median of the
previous periods: robust to one-off spikes in the history) *and* the excess is at least ``min_impact``.
Each anomaly names the child dimension (service, task, ...) that explains most of the excess.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from finops_provider.core.aggregation import aggregate_ledger
from finops_provider.core.money import MONEY_CONTEXT, Money

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

    @property
    def impact(self) -> Money:
        return self.actual - self.expected

    @property
    def severity(self) -> str:
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
