"""The seed's plain-Python API: ``FinOpsOrchestrator``, a façade over the hooks, ledger, budgets and anomalies.

.. code-block:: python

    orchestrator = FinOpsOrchestrator(job_id="manufacturing-etl", job_budget_usd=100.0,
                                      anomaly_threshold_pct=150, cost_center="SBE")
    orchestrator.collect_batch_costs(aws_tag_key="app", aws_tag_value="manufacturing-etl")
    summary = orchestrator.get_executive_summary()
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any

from finops_provider.core.anomaly import BaselineDetector
from finops_provider.core.budgets import evaluate, period_bounds
from finops_provider.core.config import BudgetConfig, FinOpsConfig, Threshold
from finops_provider.core.ledger import Ledger
from finops_provider.core.money import Money, to_decimal

log = logging.getLogger(__name__)


class FinOpsOrchestrator:
    """Collect, attribute, budget-check and summarise the cost of one job.

    :param job_id: the job's name; stored as ``x_job_id`` on every record collected for it.
    :param job_budget_usd: the job's monthly budget in USD (Decimal-safe: floats go through ``str``).
    :param anomaly_threshold_pct: a day costing more than this percent of the baseline (median of the
        previous days) is an anomaly; 150 means "more than 1.5 × normal".
    :param cost_center: the cost center the job's spend is charged to.
    :param aws_conn_id: Airflow connection for AWS Cost Explorer.
    :param ledger: a :class:`Ledger`, or None for the configured / default one.
    :param config: FinOps config (team mappings, attribution keys); defaults apply when None.
    """

    def __init__(
        self,
        job_id: str,
        job_budget_usd: float | Decimal | str,
        anomaly_threshold_pct: float | Decimal | str = 150,
        cost_center: str | None = None,
        *,
        team: str | None = None,
        aws_conn_id: str = "aws_default",
        ledger: Ledger | None = None,
        config: FinOpsConfig | None = None,
        anomaly_min_impact_usd: float | Decimal | str = 1,
    ) -> None:
        if not job_id:
            raise ValueError("job_id: give the job's name, for example 'manufacturing-etl'")
        self.job_id = job_id
        self.budget = Money(to_decimal(job_budget_usd, field_name="job_budget_usd"), "USD")
        if self.budget.amount <= 0:
            raise ValueError(f"job_budget_usd: must be > 0, got {job_budget_usd}")
        self.anomaly_threshold_pct = to_decimal(anomaly_threshold_pct, field_name="anomaly_threshold_pct")
        self.anomaly_min_impact = to_decimal(anomaly_min_impact_usd, field_name="anomaly_min_impact_usd")
        self.cost_center = cost_center
        self.team = team
        self.aws_conn_id = aws_conn_id
        if config is None:
            from finops_provider.settings import get_config

            config = get_config()
        self.config = config
        if ledger is None:
            from finops_provider.settings import get_ledger

            ledger = get_ledger(config=config)
        self.ledger = ledger
        self.window: tuple[dt.datetime, dt.datetime] | None = None
        self.last_collection: dict[str, Any] = {}

    def collect_batch_costs(
        self,
        aws_tag_key: str,
        aws_tag_value: str | None = None,
        start: dt.date | dt.datetime | str | None = None,
        end: dt.date | dt.datetime | str | None = None,
        *,
        hook: Any = None,
    ) -> dict[str, Any]:
        """Collect the job's AWS costs (Cost Explorer, grouped by ``aws_tag_key`` and service) into the ledger.

        The window defaults to the current month up to tomorrow; re-running it restates, never double counts.

        :return: rows, API requests, provisional rows and totals per currency (exact strings).
        """
        from finops_provider.collect import collect_aws

        now = dt.datetime.now(dt.UTC)
        s = _as_utc(start) if start is not None else period_bounds("month", now)[0]
        e = (
            _as_utc(end)
            if end is not None
            else (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        )
        if e <= s:
            raise ValueError(f"end {e.date()} must be after start {s.date()}")
        value = aws_tag_value or self.job_id
        res, ing = collect_aws(
            self.ledger,
            self.config,
            s,
            e,
            tag_key=aws_tag_key,
            tag_values=[value],
            aws_conn_id=self.aws_conn_id,
            overrides={"x_job_id": self.job_id, "x_cost_center": self.cost_center, "x_team": self.team},
            hook=hook,
        )
        self.window = (s, e)
        self.last_collection = {
            "rows": len(res.records),
            "requests": res.requests,
            "provisional_rows": res.provisional,
            "totals": res.totals(),
            "ledger": {
                "inserted": ing.inserted,
                "restated": ing.restated,
                "unchanged": ing.unchanged,
                "removed": ing.removed,
            },
        }
        log.info("collected %d rows for job %s in %d request(s)", len(res.records), self.job_id, res.requests)
        return self.last_collection

    def get_executive_summary(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """The job's spend against its budget, with breach status and anomaly flag.

        Money is exact: ``total_cost`` is ``{"amount": "<decimal string>", "currency": "USD"}``.
        """
        now = now or dt.datetime.now(dt.UTC)
        s, e = self.window or period_bounds("month", now)
        total = self.ledger.totals(start=s, end=e, job_id=self.job_id)
        usd = total.get("USD")
        budget = BudgetConfig(
            name=f"job:{self.job_id}",
            scope={"job": self.job_id},
            period="month",
            amount=self.budget.amount,
            thresholds=(
                Threshold(pct=Decimal(80), actions=("notify",)),
                Threshold(pct=Decimal(100), actions=("notify",)),
            ),
        )
        status = evaluate(budget, usd, period_start=s, period_end=e, now=min(now, e))
        crossed = sorted(b.threshold_pct for b in status.breaches if b.basis == "actual")
        breach_status = "breached" if crossed and crossed[-1] >= 100 else "warning" if crossed else "ok"
        last_day = (min(now, e) - dt.timedelta(days=1)).date()
        detector = BaselineDetector(self.anomaly_threshold_pct, self.anomaly_min_impact, baseline_days=14)
        anomalies = detector.scan(self.ledger, last_day, dims=("job",), job_id=self.job_id)
        return {
            "job_id": self.job_id,
            "cost_center": self.cost_center,
            "team": self.team,
            "window": {"start": s.isoformat(), "end": e.isoformat()},
            "total_cost": usd.to_json(),
            "other_currencies": {m.currency: str(m.amount) for m in total.items() if m.currency != "USD"},
            "budget": self.budget.to_json(),
            "budget_utilisation_pct": str(status.utilisation_pct),
            "forecast": status.forecast.to_json(),
            "breach_status": breach_status,
            "thresholds_crossed_pct": [str(c) for c in crossed],
            "anomaly": bool(anomalies),
            "anomalies": [a.to_json() for a in anomalies],
            "last_collection": self.last_collection,
        }


def _as_utc(v: dt.date | dt.datetime | str) -> dt.datetime:
    if isinstance(v, str):
        v = dt.datetime.fromisoformat(v) if "T" in v or " " in v else dt.date.fromisoformat(v)
    if isinstance(v, dt.datetime):
        return v.replace(tzinfo=dt.UTC) if v.tzinfo is None else v.astimezone(dt.UTC)
    return dt.datetime(v.year, v.month, v.day, tzinfo=dt.UTC)
